//! Tells the gateway when its config file may have changed, for hot reload.
//!
//! # How it works
//!
//! It watches the file's *parent directory*, not the file. Watching the file
//! itself misses the two most common ways configs are replaced:
//!
//! - editors (and `mv`) write a temporary file and rename it over the old
//!   one, so the watched inode is simply unlinked;
//! - Kubernetes ConfigMap volumes make `config.toml` a symlink to
//!   `..data/config.toml`, and update by atomically renaming a new `..data`
//!   symlink into place; `config.toml` itself is never touched.
//!
//! So every event in the directory that names the file or `..data` (or the
//! directory itself) counts. Events only mean "may have changed": the reload
//! compares the content hash to decide whether anything did. Bursts (an
//! editor's write + rename + chmod) are debounced into one wake-up.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// The symlink Kubernetes swaps to publish a new ConfigMap version.
const K8S_DATA_LINK: &str = "..data";

/// Watches one config file; see the module docs for what counts as a change.
pub struct ConfigWatcher {
    /// Held only so the OS watch lives as long as this value; `None` in tests
    /// that feed events by hand.
    _watcher: Option<RecommendedWatcher>,
    /// One `()` per relevant event, sent from notify's own thread.
    events: mpsc::UnboundedReceiver<()>,
    debounce: Duration,
    /// An event was received but its debounce not finished, so a `changed()`
    /// cancelled mid-debounce (say, in a `select!`) does not lose it.
    pending: bool,
}

impl ConfigWatcher {
    /// Starts watching `path`'s directory. The file itself need not exist
    /// yet, but the directory must.
    pub fn new(path: &Path, debounce: Duration) -> Result<Self, notify::Error> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .ok_or_else(|| notify::Error::generic("config path has no file name"))?
            .to_owned();
        let filter = Filter {
            dir: dir.clone(),
            name,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            if filter.is_relevant(&event) {
                // Fails only once the ConfigWatcher is gone; nothing to tell.
                let _ = tx.send(());
            }
        })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(Self {
            _watcher: Some(watcher),
            events: rx,
            debounce,
            pending: false,
        })
    }

    /// A watcher fed by hand, to test the debounce with paused time.
    #[cfg(test)]
    fn from_channel(events: mpsc::UnboundedReceiver<()>, debounce: Duration) -> Self {
        Self {
            _watcher: None,
            events,
            debounce,
            pending: false,
        }
    }

    /// Resolves when the file's content may have changed (debounced: a burst
    /// of events within `debounce` yields one wake-up). `None` if the watcher
    /// died.
    ///
    /// Cancel-safe: an event seen by a cancelled call is reported by the next.
    pub async fn changed(&mut self) -> Option<()> {
        if !self.pending {
            self.events.recv().await?;
            self.pending = true;
        }
        // Wait for a quiet spell, so the reload reads the file after the
        // writer has finished rather than halfway through. An event restarts
        // the wait; quiet or a closed channel ends it. A change was seen
        // either way, so it is reported (a closed channel gives `None` next).
        while let Ok(Some(())) = tokio::time::timeout(self.debounce, self.events.recv()).await {}
        self.pending = false;
        Some(())
    }
}

/// Decides which directory events concern the config file.
struct Filter {
    dir: PathBuf,
    name: OsString,
}

impl Filter {
    fn is_relevant(&self, event: &notify::Result<Event>) -> bool {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                // An error may mean missed events; a spurious reload is cheap
                // (the hash is unchanged) while a missed one is not.
                tracing::warn!(%error, dir = %self.dir.display(), "config watcher error");
                return true;
            }
        };
        if event.need_rescan() {
            return true;
        }
        match event.kind {
            // Opening or reading the file, which the reload itself does,
            // must not trigger another reload. Closing after a write is a
            // finished change, though.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) => return false,
            _ => {}
        }
        event.paths.iter().any(|p| {
            p == &self.dir
                || p.file_name()
                    .is_some_and(|n| n == self.name.as_os_str() || n == K8S_DATA_LINK)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RenameMode};
    use std::fs;
    use tokio::time::{timeout, Instant};

    /// Long enough for a slow CI machine, and only ever reached on failure.
    const GENEROUS: Duration = Duration::from_secs(10);
    const DEBOUNCE: Duration = Duration::from_millis(50);

    async fn expect_change(watcher: &mut ConfigWatcher) {
        timeout(GENEROUS, watcher.changed())
            .await
            .expect("no change reported within 10s")
            .expect("watcher died");
    }

    fn filter() -> Filter {
        Filter {
            dir: PathBuf::from("/etc/cascadia"),
            name: OsString::from("config.toml"),
        }
    }

    fn event(kind: EventKind, path: &str) -> notify::Result<Event> {
        Ok(Event::new(kind).add_path(PathBuf::from(path)))
    }

    #[test]
    fn filter_keeps_the_file_data_link_and_dir() {
        let f = filter();
        let modify = EventKind::Modify(ModifyKind::Any);
        assert!(f.is_relevant(&event(modify, "/etc/cascadia/config.toml")));
        assert!(f.is_relevant(&event(
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            "/etc/cascadia/..data"
        )));
        assert!(f.is_relevant(&event(modify, "/etc/cascadia")));
        assert!(f.is_relevant(&event(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            "/etc/cascadia/config.toml"
        )));
    }

    #[test]
    fn filter_drops_other_files_and_reads() {
        let f = filter();
        assert!(!f.is_relevant(&event(
            EventKind::Create(CreateKind::File),
            "/etc/cascadia/other.toml"
        )));
        assert!(!f.is_relevant(&event(
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            "/etc/cascadia/config.toml"
        )));
        assert!(!f.is_relevant(&event(
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            "/etc/cascadia/config.toml"
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_wake_up() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher = ConfigWatcher::from_channel(rx, Duration::from_millis(100));
        let start = Instant::now();
        let burst = tx.clone();
        tokio::spawn(async move {
            for _ in 0..3 {
                burst.send(()).unwrap();
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        });
        watcher.changed().await.unwrap();
        // Last event at 80ms, then 100ms of quiet.
        assert_eq!(start.elapsed(), Duration::from_millis(180));
        // The burst was consumed: nothing more until the next event.
        assert!(timeout(Duration::from_secs(5), watcher.changed())
            .await
            .is_err());
        tx.send(()).unwrap();
        watcher.changed().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_keeps_its_event() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher = ConfigWatcher::from_channel(rx, Duration::from_millis(100));
        tx.send(()).unwrap();
        // Cancelled mid-debounce.
        assert!(timeout(Duration::from_millis(10), watcher.changed())
            .await
            .is_err());
        watcher.changed().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn none_once_the_channel_closes() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher = ConfigWatcher::from_channel(rx, Duration::from_millis(100));
        tx.send(()).unwrap();
        drop(tx);
        assert_eq!(watcher.changed().await, Some(()));
        assert_eq!(watcher.changed().await, None);
    }

    #[tokio::test]
    async fn plain_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs::write(&path, "a = 1\n").unwrap();
        let mut watcher = ConfigWatcher::new(&path, DEBOUNCE).unwrap();
        fs::write(&path, "a = 2\n").unwrap();
        expect_change(&mut watcher).await;
    }

    #[tokio::test]
    async fn rename_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs::write(&path, "a = 1\n").unwrap();
        let mut watcher = ConfigWatcher::new(&path, DEBOUNCE).unwrap();
        let tmp = dir.path().join(".config.toml.tmp");
        fs::write(&tmp, "a = 2\n").unwrap();
        fs::rename(&tmp, &path).unwrap();
        expect_change(&mut watcher).await;
        assert_eq!(fs::read_to_string(&path).unwrap(), "a = 2\n");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn kubernetes_symlink_swap() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("..2026_a")).unwrap();
        fs::write(root.join("..2026_a/config.toml"), "a = 1\n").unwrap();
        symlink("..2026_a", root.join("..data")).unwrap();
        symlink("..data/config.toml", root.join("config.toml")).unwrap();
        let path = root.join("config.toml");
        let mut watcher = ConfigWatcher::new(&path, DEBOUNCE).unwrap();

        // What the kubelet does: new dir, new link, rename the link into place.
        fs::create_dir(root.join("..2026_b")).unwrap();
        fs::write(root.join("..2026_b/config.toml"), "a = 2\n").unwrap();
        symlink("..2026_b", root.join("..data_tmp")).unwrap();
        fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();

        expect_change(&mut watcher).await;
        assert_eq!(fs::read_to_string(&path).unwrap(), "a = 2\n");
    }
}
