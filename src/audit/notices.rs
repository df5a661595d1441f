//! Telling people their history was read (`[admin] notify_subject`): each justified
//! read or export of a person's history leaves a notice for that person — who read
//! it, when, which period, why — which the captive portal shows them every time they
//! look at it until they say they have read it (a form, not the mere showing: a
//! page loaded by a probe or a prefetch must not count as told). Seen notices are
//! dropped after the audit retention period. Kept in `<data_dir>/notices.json` (a
//! handful a year per school), written atomically; without a data directory, in
//! memory.

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

    /// `subject`'s notices they have not acknowledged yet (showing them changes
    /// nothing).
    pub fn unseen(&self, subject: &str) -> Vec<Notice> {
        let all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .filter(|n| n.subject == subject && !n.seen)
            .cloned()
            .collect()
    }

    /// `subject` has read their notices up to `until` (the newest they were shown):
    /// those are marked seen; one that came after stays. Returns how many.
    pub fn acknowledge(&self, subject: &str, until: DateTime<Utc>) -> usize {
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for notice in all
            .iter_mut()
            .filter(|x| x.subject == subject && !x.seen && x.time <= until)
        {
            notice.seen = true;
            n += 1;
        }
        if n > 0 {
            self.save(&all);
        }
        n
    }

    /// Drops the seen notices from before `before` (the audit retention); returns
    /// how many. Unseen ones stay until the person has read them.
    pub fn purge_seen(&self, before: DateTime<Utc>) -> usize {
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        let len = all.len();
        all.retain(|n| !(n.seen && n.time < before));
        let n = len - all.len();
        if n > 0 {
            self.save(&all);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_kept_until_acknowledged_then_purged() {
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
        // Survives a restart; shown until acknowledged.
        let again = Notices::open(Some(dir.path()));
        assert!(again.unseen("other").is_empty());
        let shown = again.unseen("eleve1");
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0].accessed_by, "verif");
        assert_eq!(again.unseen("eleve1").len(), 1, "showing is not reading");
        // A notice newer than what was shown stays unseen.
        again.add(Notice {
            time: now + chrono::Duration::seconds(5),
            ..shown[0].clone()
        });
        assert_eq!(again.acknowledge("eleve1", shown[0].time), 1);
        assert_eq!(again.unseen("eleve1").len(), 1);
        assert_eq!(
            Notices::open(Some(dir.path())).unseen("eleve1").len(),
            1,
            "acknowledged for good"
        );
        // Retention drops seen notices only.
        assert_eq!(again.purge_seen(now + chrono::Duration::days(1)), 1);
        assert_eq!(again.unseen("eleve1").len(), 1);
        assert_eq!(Notices::open(Some(dir.path())).all.lock().unwrap().len(), 1);
    }
}
