//! Dropping root: once the sockets are bound and the files opened, the master (and so every
//! worker it forks) runs as the configured user and group, with that user's supplementary
//! groups.

use std::ffi::CString;

use nix::unistd::{Gid, Group, Uid, User, initgroups, setgid, setgroups, setuid};

use crate::Error;

/// A user and group to run as, resolved when the configuration is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) user: Option<(String, Uid)>,
    pub(crate) group: Option<Gid>,
}

/// Resolves a user name or numeric uid.
pub(crate) fn user(text: &str) -> Result<(String, Uid), String> {
    let found = match text.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(text),
    };
    match found {
        Ok(Some(user)) => Ok((user.name, user.uid)),
        Ok(None) => Err("no such user".to_string()),
        Err(e) => Err(format!("cannot look the user up: {e}")),
    }
}

/// Resolves a group name or numeric gid.
pub(crate) fn group(text: &str) -> Result<Gid, String> {
    let found = match text.parse::<u32>() {
        Ok(gid) => Group::from_gid(Gid::from_raw(gid)),
        Err(_) => Group::from_name(text),
    };
    match found {
        Ok(Some(group)) => Ok(group.gid),
        Ok(None) => Err("no such group".to_string()),
        Err(e) => Err(format!("cannot look the group up: {e}")),
    }
}

impl Credentials {
    /// The ids a socket file is given, where set.
    pub(crate) fn owner(&self) -> (Option<Uid>, Option<Gid>) {
        (self.user.as_ref().map(|(_, uid)| *uid), self.group)
    }

    /// Switches this process to the credentials: supplementary groups, then the group, then
    /// the user, as only root may do the first two.
    pub(crate) fn apply(&self) -> Result<(), Error> {
        let fail = |what: &str, e: nix::Error| Error::config(format!("cannot {what}: {e}"));
        match (&self.user, self.group) {
            (Some((name, uid)), group) => {
                let primary = match group {
                    Some(gid) => gid,
                    None => User::from_uid(*uid)
                        .ok()
                        .flatten()
                        .map_or(Gid::current(), |u| u.gid),
                };
                let cname = CString::new(name.as_str())
                    .map_err(|_| Error::config(format!("bad user name {name:?}")))?;
                initgroups(&cname, primary)
                    .map_err(|e| fail(&format!("set the groups of {name}"), e))?;
                setgid(primary).map_err(|e| fail("change group", e))?;
                setuid(*uid).map_err(|e| fail(&format!("become {name}"), e))?;
            }
            (None, Some(gid)) => {
                setgroups(&[gid]).map_err(|e| fail("set the groups", e))?;
                setgid(gid).map_err(|e| fail("change group", e))?;
            }
            (None, None) => {}
        }
        Ok(())
    }
}
