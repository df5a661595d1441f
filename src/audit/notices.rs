//! Telling people their history was read (`[admin] notify_subject`): each justified
//! read or export of a person's history leaves a notice for that person — who read
//! it, when, which period, why — which the captive portal shows them the next time
//! they look at it, once. Kept in `<data_dir>/notices.json` (a handful a year per
//! school), written atomically; without a data directory, in memory.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One read of a person's history, as they are told of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub subject: String,
    pub time: DateTime<Utc>,
    pub accessed_by: String,
    pub justification: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Shown to the person already.
    #[serde(default)]
    pub seen: bool,
}

pub struct Notices {
    path: Option<PathBuf>,
    all: Mutex<Vec<Notice>>,
}

impl Notices {
    /// The notices of `data_dir` (none yet, or an unreadable file: an empty list,
    /// logged).
    pub fn open(data_dir: Option<&Path>) -> Notices {
        let path = data_dir.map(|d| d.join("notices.json"));
        let all = match &path {
            Some(p) => match std::fs::read(p) {
                Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                    tracing::error!("{}: unreadable notices, starting empty: {e}", p.display());
                    Vec::new()
                }),
                Err(_) => Vec::new(),
            },
            None => Vec::new(),
        };
        Notices {
            path,
            all: Mutex::new(all),
        }
    }

    fn save(&self, all: &[Notice]) {
        let Some(path) = &self.path else { return };
        let tmp = path.with_extension("json.tmp");
        let r = serde_json::to_vec_pretty(all)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = r {
            tracing::error!("{}: notices not saved: {e}", path.display());
        }
    }

    pub fn add(&self, notice: Notice) {
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        all.push(notice);
        self.save(&all);
    }

    /// `subject`'s notices not shown yet, now marked shown.
    pub fn take_unseen(&self, subject: &str) -> Vec<Notice> {
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for n in all.iter_mut().filter(|n| n.subject == subject && !n.seen) {
            n.seen = true;
            out.push(n.clone());
        }
        if !out.is_empty() {
            self.save(&all);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_kept_and_shown_once() {
        let dir = tempfile::tempdir().unwrap();
        let n = Notices::open(Some(dir.path()));
        let now = Utc::now();
        n.add(Notice {
            subject: "eleve1".into(),
            time: now,
            accessed_by: "verif".into(),
            justification: "Plainte 2026-114 du conseil".into(),
            from: now,
            to: now,
            seen: false,
        });
        // Survives a restart; shown once.
        let again = Notices::open(Some(dir.path()));
        assert!(again.take_unseen("other").is_empty());
        let shown = again.take_unseen("eleve1");
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0].accessed_by, "verif");
        assert!(again.take_unseen("eleve1").is_empty());
        assert!(
            Notices::open(Some(dir.path()))
                .take_unseen("eleve1")
                .is_empty()
        );
    }
}
