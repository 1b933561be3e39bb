//! The user and group the server runs as once its sockets are bound, resolved from names or
//! ids when the configuration is read, so that a missing user is bad input, not a failure
//! after start.

use nix::unistd::{Gid, Group, Uid, User};

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
}
