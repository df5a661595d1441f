//! Giving up root. `vigie run` started as root (an init script, a container's
//! default user, `sudo`) binds every listener first — DNS on 53, the block-page
//! listeners on 80 and 443 — then hands its data directory to an unprivileged user
//! and becomes that user for good, before it serves anything. Under systemd it is
//! started as its own user with `CAP_NET_BIND_SERVICE` instead, and nothing here
//! happens.
//!
//! This module owns whom to become (`--user`, default [`DEFAULT_USER`]), the
//! ownership of the data directory, the switch itself (supplementary groups, gid,
//! uid, `no_new_privs`), the proof that every thread made it with no capability
//! left, and the check that the files vigie reads again later (reloads, logins) are
//! open to the new user. It binds nothing and decides nothing.

use std::ffi::{CStr, CString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::{AccessFlags, Gid, Uid, User};

/// The user `vigie run` becomes when started as root with no `--user`, as unbound
/// becomes `unbound`: a user of its own, so the audit trail (people's browsing) is
/// readable by no other service. `nobody` is shared by many daemons and is not a
/// fallback — except for a try-out on the embedded defaults without a data
/// directory (nothing is written to disk), see [`plan`].
pub const DEFAULT_USER: &str = "vigie";

/// Whom a root try-out becomes when there is no `vigie` user.
const TRY_OUT_USER: &str = "nobody";

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "vigie was started as root and runs as user \"{DEFAULT_USER}\" once its ports are bound, \
         but there is no such user: create it (useradd --system --user-group --home-dir \
         /var/lib/vigie --shell /usr/sbin/nologin vigie) or name another with --user NAME \
         (--user root keeps root: not recommended)"
    )]
    NoDefaultUser,
    #[error("--user {0}: no such user")]
    NoSuchUser(String),
    #[error("cannot look user {name} up: {source}")]
    Lookup { name: String, source: Errno },
    #[error("refusing to hand {} over to user {user}: {why}", path.display())]
    DataDir {
        path: PathBuf,
        user: String,
        why: String,
    },
    #[error("cannot hand {} over to user {user}: {source}", path.display())]
    Chown {
        path: PathBuf,
        user: String,
        source: Errno,
    },
    #[error("cannot become user {user}: {step}: {source}")]
    Switch {
        user: String,
        step: String,
        source: Errno,
    },
    #[error("after becoming user {user}: {what}")]
    Verify { user: String, what: String },
    #[error(
        "user {user} cannot use files vigie needs while it runs; give the user access \
         (e.g. chgrp {user} FILE && chmod g+r FILE) or choose another --user:\n{}",
        problems.join("\n")
    )]
    Access { user: String, problems: Vec<String> },
}

/// The unprivileged user to become after binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    /// Supplementary groups (the user's groups from the group database, its primary
    /// group included), sorted.
    pub groups: Vec<Gid>,
}

/// Decides whom to become, before anything is opened or bound, so that a wrong
/// `--user` stops vigie before it serves anything.
///
/// - started as root: `--user NAME`, else [`DEFAULT_USER`]; a user that does not
///   exist is an error. A user whose uid is 0 (`--user root`) keeps root, with a
///   warning: an explicit choice, never a silent one.
/// - not root: there is nothing to give up. `--user` naming the current user is
///   fine; naming another is ignored with a warning (the process cannot switch);
///   naming no existing user is still an error.
///
/// `writes_nothing`: started on the embedded defaults without a data directory
/// (`vigie run` as a newcomer tries it): no audit trail on disk, so without a `vigie`
/// user the switch goes to `nobody` (with a warning) instead of refusing to start.
pub fn plan(
    requested: Option<&str>,
    writes_nothing: bool,
) -> Result<Option<RunAs>, PrivilegeError> {
    let euid = Uid::effective();
    if !euid.is_root() {
        let Some(name) = requested else {
            return Ok(None);
        };
        let user = lookup(name)?.ok_or_else(|| PrivilegeError::NoSuchUser(name.to_string()))?;
        if user.uid != euid {
            tracing::warn!(
                "--user {name} ignored: vigie was not started as root (it runs as uid {euid}), \
                 so it cannot switch users"
            );
        }
        return Ok(None);
    }
    let mut name = requested.unwrap_or(DEFAULT_USER);
    let mut found = lookup(name)?;
    if found.is_none() && requested.is_none() && writes_nothing {
        tracing::warn!(
            "no \"{DEFAULT_USER}\" user: this try-out (embedded defaults, no data directory) \
             runs as \"{TRY_OUT_USER}\" once its ports are bound; create the \"{DEFAULT_USER}\" \
             user for a real deployment"
        );
        name = TRY_OUT_USER;
        found = lookup(name)?;
    }
    let Some(user) = found else {
        return Err(match requested {
            Some(n) => PrivilegeError::NoSuchUser(n.to_string()),
            None => PrivilegeError::NoDefaultUser,
        });
    };
    if user.uid.is_root() {
        tracing::warn!(
            "--user {name}: vigie keeps running as root after binding its ports; \
             a flaw in any request path would then own the gateway"
        );
        return Ok(None);
    }
    let groups = groups_of(&user).map_err(|source| PrivilegeError::Lookup {
        name: name.to_string(),
        source,
    })?;
    Ok(Some(RunAs {
        name: user.name,
        uid: user.uid,
        gid: user.gid,
        groups,
    }))
}

/// The user's groups (from the group database, its primary group included), sorted.
fn groups_of(user: &User) -> Result<Vec<Gid>, Errno> {
    let mut groups = match CString::new(user.name.clone()) {
        Ok(c) => nix::unistd::getgrouplist(&c, user.gid)?,
        Err(_) => vec![user.gid],
    };
    groups.sort_by_key(|g| g.as_raw());
    groups.dedup();
    Ok(groups)
}

/// A user by name, or by number when the name is all digits and no user has it as
/// a name (container platforms give numeric ids).
fn lookup(name: &str) -> Result<Option<User>, PrivilegeError> {
    let err = |source| PrivilegeError::Lookup {
        name: name.to_string(),
        source,
    };
    if let Some(u) = User::from_name(name).map_err(err)? {
        return Ok(Some(u));
    }
    match name.parse::<u32>() {
        Ok(n) => User::from_uid(Uid::from_raw(n)).map_err(err),
        Err(_) => Ok(None),
    }
}

/// For vigie's commands that write where the service keeps its state (`audit`,
/// `users`, `lists update`): run by root in a directory that belongs to another
/// user (the service's), the command becomes that user first, as `sudo -u vigie`
/// would. Otherwise what it creates there — the audit store's WAL files, a replaced
/// users file, downloaded lists — would be root's, and the running service could
/// no longer write its audit trail nor read them. Returns the user it became.
pub fn become_owner_of(dir: &Path) -> Result<Option<RunAs>, PrivilegeError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(None);
    };
    if meta.uid() == 0 {
        return Ok(None);
    }
    let uid = Uid::from_raw(meta.uid());
    let to = match User::from_uid(uid).map_err(|source| PrivilegeError::Lookup {
        name: uid.to_string(),
        source,
    })? {
        Some(u) => RunAs {
            groups: groups_of(&u).unwrap_or_else(|_| vec![u.gid]),
            name: u.name,
            uid,
            gid: u.gid,
        },
        // A numeric owner with no name (a container's volume): its own group only.
        None => RunAs {
            name: uid.to_string(),
            uid,
            gid: Gid::from_raw(meta.gid()),
            groups: vec![Gid::from_raw(meta.gid())],
        },
    };
    forbid_new_privileges(&to)?;
    become_user(&to)?;
    Ok(Some(to))
}

/// Makes `dir` (created if missing, mode 0750) and everything under it belong to
/// `to`, as systemd's `StateDirectory=` does: files that vigie or an earlier run as
/// root created there (audit store, list cache, certificates, the users file) must
/// stay writable after the switch. Returns how many entries changed owner.
///
/// The walk is made safe against a hostile tree: directories are opened relative to
/// their parent with `O_NOFOLLOW` and each entry is changed through its own open
/// descriptor, so a symbolic link swapped in is never followed (a link itself only
/// changes owner); a file with several hard links is left alone unless the kernel
/// forbids linking others' files (`fs.protected_hardlinks`), as is any file system
/// mounted below. Directories that are
/// never one service's own (`/`, `/var/lib`, `/usr/…`) and directories that belong
/// to some third user are refused rather than handed over.
pub fn hand_over_data_dir(dir: &Path, to: &RunAs) -> Result<usize, PrivilegeError> {
    // With the kernel's protection on (the default of every major distribution),
    // nobody links a file they do not own, so a file with several links is one
    // vigie's own tools linked (list sets share unchanged files).
    let links_protected =
        std::fs::read_to_string("/proc/sys/fs/protected_hardlinks").is_ok_and(|v| v.trim() == "1");
    hand_over(dir, to, links_protected)
}

fn hand_over(dir: &Path, to: &RunAs, links_protected: bool) -> Result<usize, PrivilegeError> {
    let refuse = |why: String| PrivilegeError::DataDir {
        path: dir.to_path_buf(),
        user: to.name.clone(),
        why,
    };
    let io = |e: std::io::Error| refuse(e.to_string());
    let created = std::fs::symlink_metadata(dir).is_err();
    std::fs::create_dir_all(dir).map_err(io)?;
    if created {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).map_err(io)?;
    }
    let top = std::fs::canonicalize(dir).map_err(io)?;
    if let Some(why) = shared_system_dir(&top) {
        return Err(refuse(why.to_string()));
    }
    let meta = std::fs::metadata(&top).map_err(io)?;
    if !meta.is_dir() {
        return Err(refuse("it is not a directory".into()));
    }
    if meta.uid() != 0 && meta.uid() != to.uid.as_raw() {
        return Err(refuse(format!(
            "it belongs to uid {}, neither root nor {}: point data_dir at a directory of its own, \
             such as /var/lib/vigie",
            meta.uid(),
            to.name
        )));
    }
    let chown_err = |path: &Path, source: Errno| PrivilegeError::Chown {
        path: path.to_path_buf(),
        user: to.name.clone(),
        source,
    };
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::open(&top, flags, Mode::empty()).map_err(|e| chown_err(&top, e))?;
    let mut walk = Walk {
        to,
        root_dev: meta.dev(),
        links_protected,
        changed: usize::from(claim(&fd, to).map_err(|e| chown_err(&top, e))?),
        linked_left: 0,
    };
    walk.tree(fd, &top).map_err(|(p, e)| chown_err(&p, e))?;
    if walk.linked_left > 0 {
        tracing::warn!(
            "{} files with several hard links under {} left as they are: fs.protected_hardlinks \
             is off, so they may be files from elsewhere",
            walk.linked_left,
            top.display()
        );
    }
    Ok(walk.changed)
}

/// One hand-over walk.
struct Walk<'a> {
    to: &'a RunAs,
    root_dev: u64,
    links_protected: bool,
    changed: usize,
    linked_left: usize,
}

impl Walk<'_> {
    /// Hands over what the open directory `fd` (at `path`, for messages) holds,
    /// each subdirectory as soon as it is found: one descriptor per level is open.
    fn tree(&mut self, fd: OwnedFd, path: &Path) -> Result<(), (PathBuf, Errno)> {
        let mut listing = nix::dir::Dir::from_fd(fd).map_err(|e| (path.to_path_buf(), e))?;
        let mut names: Vec<CString> = Vec::new();
        for entry in listing.iter() {
            let entry = entry.map_err(|e| (path.to_path_buf(), e))?;
            let name = entry.file_name();
            if name != c"." && name != c".." {
                names.push(name.to_owned());
            }
        }
        for name in names {
            let child = path.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
            match self.entry(&listing, &name) {
                Ok(Some(dir)) => self.tree(dir, &child)?,
                Ok(None) => {}
                // Gone meanwhile (a file being replaced): nothing to hand over.
                Err(Errno::ENOENT) => {}
                Err(e) => return Err((child, e)),
            }
        }
        Ok(())
    }

    /// Hands over one entry of `parent`; returns it open when it is a directory to
    /// walk into.
    fn entry(&mut self, parent: &nix::dir::Dir, name: &CStr) -> Result<Option<OwnedFd>, Errno> {
        let to = self.to;
        // O_NONBLOCK: opening a FIFO must not wait for a writer. O_NOFOLLOW: a
        // symbolic link fails with ELOOP instead of being followed.
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::openat(parent, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ELOOP) => {
                // A symbolic link: its own owner changes, never its target's.
                let nofollow = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
                let st = nix::sys::stat::fstatat(parent, name, nofollow)?;
                if st.st_uid != to.uid.as_raw() || st.st_gid != to.gid.as_raw() {
                    nix::unistd::fchownat(parent, name, Some(to.uid), Some(to.gid), nofollow)?;
                    self.changed += 1;
                }
                return Ok(None);
            }
            // A socket (ENXIO) or a device node: not vigie's kind of file, and
            // nothing it needs.
            Err(Errno::ENXIO | Errno::ENODEV | Errno::EOPNOTSUPP) => return Ok(None),
            Err(e) => return Err(e),
        };
        let st = nix::sys::stat::fstat(&fd)?;
        if st.st_dev != self.root_dev {
            // Another file system mounted below: not the data directory's.
            return Ok(None);
        }
        let is_dir = st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR;
        if !is_dir && st.st_nlink > 1 && !self.links_protected {
            self.linked_left += 1;
            return Ok(None);
        }
        if claim(&fd, to)? {
            self.changed += 1;
        }
        Ok(is_dir.then_some(fd))
    }
}

/// Gives the open file to `to` unless it is theirs already; whether it changed.
fn claim(fd: &OwnedFd, to: &RunAs) -> Result<bool, Errno> {
    let st = nix::sys::stat::fstat(fd)?;
    if st.st_uid == to.uid.as_raw() && st.st_gid == to.gid.as_raw() {
        return Ok(false);
    }
    nix::unistd::fchown(fd, Some(to.uid), Some(to.gid))?;
    Ok(true)
}

/// Why `dir` (absolute, canonical) is not a directory to hand over recursively, if
/// it is one that many programs share.
fn shared_system_dir(dir: &Path) -> Option<&'static str> {
    let parts: Vec<&std::ffi::OsStr> = dir
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p),
            _ => None,
        })
        .collect();
    const SHARED: &[&str] = &[
        "var/lib",
        "var/cache",
        "var/log",
        "var/spool",
        "var/tmp",
        "var/opt",
        "var/local",
        "var/mail",
        "var/backups",
        "var/www",
        "run/user",
        "usr/local",
        "etc/ssl",
        "etc/systemd",
    ];
    let first = parts.first().and_then(|p| p.to_str()).unwrap_or("");
    // The file system hierarchy's own top-level directories (a volume mounted at
    // `/data` is fine).
    const TOP: &[&str] = &[
        "bin", "boot", "dev", "etc", "home", "lib", "lib64", "media", "mnt", "opt", "proc", "root",
        "run", "sbin", "srv", "sys", "tmp", "usr", "var",
    ];
    if parts.is_empty() || (parts.len() == 1 && TOP.contains(&first)) {
        Some(
            "it is a top-level directory; data_dir must be a directory of its own, such as /var/lib/vigie",
        )
    } else if [
        "usr", "boot", "proc", "sys", "dev", "bin", "sbin", "lib", "lib64",
    ]
    .contains(&first)
    {
        Some(
            "it holds system files; data_dir must be a directory of its own, such as /var/lib/vigie",
        )
    } else if parts.len() == 2
        && SHARED
            .iter()
            .any(|s| Path::new(s) == parts.iter().collect::<PathBuf>())
    {
        Some(
            "other programs keep their files there; data_dir must be a directory of its own, such as /var/lib/vigie",
        )
    } else {
        None
    }
}

/// Sets `no_new_privs`, so no set-user-id program (nor file capability) can give
/// root back after [`become_user`]. Unlike the ids, it is a thread's own and only
/// passes to threads created after it: call this on the main thread before the
/// async runtime starts its threads. It does not stop the switch itself.
pub fn forbid_new_privileges(to: &RunAs) -> Result<(), PrivilegeError> {
    nix::sys::prctl::set_no_new_privs().map_err(|source| PrivilegeError::Switch {
        user: to.name.clone(),
        step: "prctl(PR_SET_NO_NEW_PRIVS)".into(),
        source,
    })
}

/// Becomes `to` for good: supplementary groups, gid, then uid (glibc applies each
/// to every thread of the process, tokio's included). Then proves it: real,
/// effective and saved ids are the user's on every thread, root cannot be taken
/// back, no thread keeps a capability, and every thread has `no_new_privs`
/// ([`forbid_new_privileges`] must have run first).
pub fn become_user(to: &RunAs) -> Result<(), PrivilegeError> {
    let step = |step: String| {
        let user = to.name.clone();
        move |source| PrivilegeError::Switch { user, step, source }
    };
    let list = to
        .groups
        .iter()
        .map(|g| g.to_string())
        .collect::<Vec<_>>()
        .join(",");
    nix::unistd::setgroups(&to.groups).map_err(step(format!("setgroups({list})")))?;
    nix::unistd::setgid(to.gid).map_err(step(format!("setgid({})", to.gid)))?;
    nix::unistd::setuid(to.uid).map_err(step(format!("setuid({})", to.uid)))?;
    verify(to)?;
    tracing::info!(
        "root given up: running as user {} (uid {}, gid {}, groups {list}) with no capabilities",
        to.name,
        to.uid,
        to.gid
    );
    Ok(())
}

fn verify(to: &RunAs) -> Result<(), PrivilegeError> {
    let fail = |what: String| PrivilegeError::Verify {
        user: to.name.clone(),
        what,
    };
    let r = nix::unistd::getresuid().map_err(|e| fail(format!("getresuid: {e}")))?;
    if [r.real, r.effective, r.saved].iter().any(|u| *u != to.uid) {
        return Err(fail(format!(
            "uids are {}/{}/{} (real/effective/saved), not {}",
            r.real, r.effective, r.saved, to.uid
        )));
    }
    let g = nix::unistd::getresgid().map_err(|e| fail(format!("getresgid: {e}")))?;
    if [g.real, g.effective, g.saved].iter().any(|x| *x != to.gid) {
        return Err(fail(format!(
            "gids are {}/{}/{} (real/effective/saved), not {}",
            g.real, g.effective, g.saved, to.gid
        )));
    }
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok()
        || nix::unistd::seteuid(Uid::from_raw(0)).is_ok()
    {
        return Err(fail("it could become root again".into()));
    }
    let want_groups: Vec<u32> = to.groups.iter().map(|g| g.as_raw()).collect();
    let threads = match std::fs::read_dir("/proc/self/task") {
        Ok(rd) => rd,
        Err(e) => {
            tracing::warn!("cannot list /proc/self/task to check every thread: {e}");
            return Ok(());
        }
    };
    let mut checked = 0;
    for t in threads.flatten() {
        let tid = t.file_name().to_string_lossy().into_owned();
        // A thread that ended meanwhile has nothing left to check.
        let Ok(text) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        let c = ThreadCreds::parse(&text)
            .ok_or_else(|| fail(format!("cannot read /proc/self/task/{tid}/status")))?;
        if let Some(problem) = c.problem(to.uid.as_raw(), to.gid.as_raw(), &want_groups) {
            return Err(fail(format!("thread {tid}: {problem}")));
        }
        checked += 1;
    }
    tracing::debug!("{checked} threads checked: all run as {}", to.name);
    Ok(())
}

/// The credential lines of `/proc/<pid>/task/<tid>/status`.
#[derive(Debug, PartialEq, Eq)]
pub struct ThreadCreds {
    /// Real, effective, saved, file-system.
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
}

impl ThreadCreds {
    pub fn parse(status: &str) -> Option<ThreadCreds> {
        let field = |key: &str| {
            status.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .map(str::trim)
            })
        };
        let four = |key: &str| -> Option<[u32; 4]> {
            let v: Vec<u32> = field(key)?
                .split_whitespace()
                .map(|n| n.parse().ok())
                .collect::<Option<_>>()?;
            v.try_into().ok()
        };
        let cap = |key: &str| u64::from_str_radix(field(key)?, 16).ok();
        Some(ThreadCreds {
            uid: four("Uid")?,
            gid: four("Gid")?,
            groups: field("Groups")?
                .split_whitespace()
                .map(|n| n.parse().ok())
                .collect::<Option<_>>()?,
            cap_prm: cap("CapPrm")?,
            cap_eff: cap("CapEff")?,
            // Absent before Linux 4.3: no ambient capabilities then.
            cap_amb: cap("CapAmb").unwrap_or(0),
            // Absent before Linux 4.10: nothing to check then (prctl said it was set).
            no_new_privs: field("NoNewPrivs").is_none_or(|v| v == "1"),
        })
    }

    /// What is wrong for a thread that should run as `uid`/`gid` with `groups`
    /// (sorted) and nothing more.
    pub fn problem(&self, uid: u32, gid: u32, groups: &[u32]) -> Option<String> {
        let mut have = self.groups.clone();
        have.sort_unstable();
        have.dedup();
        if self.uid.iter().any(|u| *u != uid) {
            Some(format!("uids {:?}, not all {uid}", self.uid))
        } else if self.gid.iter().any(|g| *g != gid) {
            Some(format!("gids {:?}, not all {gid}", self.gid))
        } else if have != groups {
            Some(format!("groups {have:?}, not {groups:?}"))
        } else if self.cap_prm | self.cap_eff | self.cap_amb != 0 {
            Some(format!(
                "capabilities left: permitted {:x}, effective {:x}, ambient {:x}",
                self.cap_prm, self.cap_eff, self.cap_amb
            ))
        } else if !self.no_new_privs {
            Some("no_new_privs is not set".into())
        } else {
            None
        }
    }
}

/// A file or directory vigie opens again while it runs, and why.
#[derive(Clone, Debug)]
pub struct Need {
    pub path: PathBuf,
    pub write: bool,
    /// Missing is fine (an optional list, a users file not created yet).
    pub may_be_missing: bool,
    pub why: &'static str,
}

/// What the running service reads or writes after start, as the user it became:
/// the config file and every list source (reloads), the users file and LDAP's files
/// (logins), the data directory (audit store, list cache, the admin app's data).
pub fn needs(
    config: &crate::config::Config,
    config_path: Option<&Path>,
    data_dir: Option<&Path>,
) -> Vec<Need> {
    let read = |path: &Path, may_be_missing, why| Need {
        path: path.to_path_buf(),
        write: false,
        may_be_missing,
        why,
    };
    let mut out = Vec::new();
    if let Some(c) = config_path {
        out.push(read(c, false, "reloads (SIGHUP, file changes) read it"));
    }
    for s in &config.sources {
        out.push(read(&s.path, true, "reloads read the lists"));
    }
    if let Some(u) = config
        .proxy
        .users_file
        .clone()
        .or_else(|| data_dir.map(|d| d.join("users")))
    {
        out.push(read(&u, true, "logins read it"));
    }
    if let Some(l) = &config.ldap {
        for f in [&l.bind_password_file, &l.ca_file].into_iter().flatten() {
            out.push(read(f, false, "LDAP logins read it"));
        }
    }
    if let Some(d) = data_dir {
        out.push(Need {
            path: d.to_path_buf(),
            write: true,
            may_be_missing: false,
            why: "the audit store, the list cache and the admin app's data are kept there",
        });
    }
    out
}

/// Checks, as the user vigie became, that every [`Need`] is met; lists every one
/// that is not. A unit directory (UT1's category directories) needs its files
/// readable too. Also warns when the admin app's configuration editor will not be
/// able to save the config file (written by renaming in its directory).
pub fn check_access(
    to: &RunAs,
    needs: &[Need],
    config_path: Option<&Path>,
) -> Result<(), PrivilegeError> {
    let mut problems = Vec::new();
    for n in needs {
        let mode = if n.write {
            AccessFlags::R_OK | AccessFlags::W_OK | AccessFlags::X_OK
        } else {
            AccessFlags::R_OK
        };
        let is_dir = n.path.is_dir();
        let mode = if is_dir {
            mode | AccessFlags::X_OK
        } else {
            mode
        };
        match nix::unistd::access(&n.path, mode) {
            Err(Errno::ENOENT) if n.may_be_missing => continue,
            Err(e) => {
                problems.push(format!("  {}: {} — {}", n.path.display(), e.desc(), n.why));
                continue;
            }
            Ok(()) => {}
        }
        if is_dir && !n.write {
            for f in std::fs::read_dir(&n.path).into_iter().flatten().flatten() {
                let p = f.path();
                if p.is_file()
                    && let Err(e) = nix::unistd::access(&p, AccessFlags::R_OK)
                {
                    problems.push(format!("  {}: {} — {}", p.display(), e.desc(), n.why));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(PrivilegeError::Access {
            user: to.name.clone(),
            problems,
        });
    }
    if let Some(dir) =
        config_path.and_then(|c| std::path::absolute(c).ok()?.parent().map(Path::to_path_buf))
        && nix::unistd::access(&dir, AccessFlags::W_OK | AccessFlags::X_OK).is_err()
    {
        tracing::warn!(
            "the admin app's configuration editor cannot save changes: user {} may not write in {} \
             (the file is replaced by a rename there)",
            to.name,
            dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tvigie\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\n\
        Uid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\nFDSize:\t64\n\
        Groups:\t65534 \nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
        CapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n\
        NoNewPrivs:\t1\nSeccomp:\t0\n";

    #[test]
    fn thread_status_parses_and_judges() {
        let c = ThreadCreds::parse(STATUS).unwrap();
        assert_eq!(c.uid, [65534; 4]);
        assert_eq!(c.groups, vec![65534]);
        assert!(c.no_new_privs);
        assert_eq!(c.problem(65534, 65534, &[65534]), None);
        // The bounding set may stay full: nothing can raise a capability into it
        // once uids are non-zero and no_new_privs is set.
        let saved_root = STATUS.replace(
            "Uid:\t65534\t65534\t65534\t65534",
            "Uid:\t65534\t65534\t0\t65534",
        );
        let c = ThreadCreds::parse(&saved_root).unwrap();
        assert!(c.problem(65534, 65534, &[65534]).unwrap().contains("uids"));
        let caps = STATUS.replace("CapEff:\t0000000000000000", "CapEff:\t0000000000000400");
        let c = ThreadCreds::parse(&caps).unwrap();
        assert!(
            c.problem(65534, 65534, &[65534])
                .unwrap()
                .contains("effective 400")
        );
        let groups = STATUS.replace("Groups:\t65534 ", "Groups:\t0 65534");
        let c = ThreadCreds::parse(&groups).unwrap();
        assert!(
            c.problem(65534, 65534, &[65534])
                .unwrap()
                .contains("groups")
        );
        let nnp = STATUS.replace("NoNewPrivs:\t1", "NoNewPrivs:\t0");
        let c = ThreadCreds::parse(&nnp).unwrap();
        assert!(
            c.problem(65534, 65534, &[65534])
                .unwrap()
                .contains("no_new_privs")
        );
        assert_eq!(ThreadCreds::parse("Name:\tx\n"), None);
    }

    #[test]
    fn shared_directories_are_never_handed_over() {
        for d in [
            "/",
            "/var",
            "/srv",
            "/var/lib",
            "/usr/local",
            "/usr/lib/vigie",
            "/proc/1",
        ] {
            assert!(shared_system_dir(Path::new(d)).is_some(), "{d}");
        }
        for d in [
            "/var/lib/vigie",
            "/srv/vigie",
            "/opt/vigie/data",
            "/tmp/x/data",
        ] {
            assert_eq!(shared_system_dir(Path::new(d)), None, "{d}");
        }
    }

    #[test]
    fn unknown_user_is_an_error_root_or_not() {
        let e = plan(Some("vigie-no-such-user-7f3a"), true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--user vigie-no-such-user-7f3a: no such user"
        );
    }

    /// As root: a tree made by root goes to `nobody`, without following a link to a
    /// file outside it; a hard-linked file only when the kernel protects links.
    #[test]
    fn data_dir_is_handed_over_without_following_links() {
        if !Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let Some(to) = plan(Some("nobody"), false).unwrap() else {
            panic!("nobody resolves to a user to become");
        };
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, "root's").unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(data.join("cache/deep")).unwrap();
        std::fs::write(data.join("audit.db"), "x").unwrap();
        std::fs::write(data.join("cache/deep/lists.bin"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, data.join("link")).unwrap();
        std::fs::hard_link(&outside, data.join("hard")).unwrap();
        let owner = |p: &Path| std::fs::symlink_metadata(p).unwrap().uid();
        // Links unprotected: the hard-linked file could be anyone's.
        let changed = hand_over(&data, &to, false).unwrap();
        // data, cache, deep, audit.db, lists.bin, the link itself.
        assert_eq!(changed, 6);
        for p in [
            "",
            "cache",
            "cache/deep",
            "audit.db",
            "cache/deep/lists.bin",
            "link",
        ] {
            assert_eq!(owner(&data.join(p)), to.uid.as_raw(), "{p}");
        }
        assert_eq!(owner(&outside), 0, "a link's target stays root's");
        assert_eq!(
            owner(&data.join("hard")),
            0,
            "a hard-linked file is left alone"
        );
        assert_eq!(hand_over(&data, &to, false).unwrap(), 0, "idempotent");
        // Links protected: only root or the user could have linked it.
        std::fs::remove_file(data.join("hard")).unwrap();
        std::fs::hard_link(data.join("audit.db"), data.join("cache/shared")).unwrap();
        std::os::unix::fs::chown(data.join("audit.db"), Some(0), Some(0)).unwrap();
        assert_eq!(hand_over(&data, &to, true).unwrap(), 1);
        assert_eq!(owner(&data.join("cache/shared")), to.uid.as_raw());
        // A directory that belongs to a third user is refused.
        let theirs = tmp.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(12345), Some(12345)).unwrap();
        let e = hand_over_data_dir(&theirs, &to).unwrap_err().to_string();
        assert!(e.contains("belongs to uid 12345"), "{e}");
        // A new data directory is created for the user, closed to others.
        let fresh = tmp.path().join("new/data");
        hand_over_data_dir(&fresh, &to).unwrap();
        let m = std::fs::metadata(&fresh).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (to.uid.as_raw(), 0o750));
    }
}
