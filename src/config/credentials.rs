//! The user and group the workers run as, resolved from names or ids when the configuration
//! is read, so that a missing user, or one the master could not switch a worker to, is bad
//! input, not a failure after start.

use nix::unistd::{Gid, Group, Uid, User};

use super::Source;

/// A user and group to run as, resolved when the configuration is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Credentials {
    /// The user's name, its uid and its own group (from the user database, looked up once
    /// here rather than in every worker).
    pub(crate) user: Option<(String, Uid, Gid)>,
    pub(crate) group: Option<Gid>,
    /// Where `user` and `group` came from, to name them when the switch is refused.
    pub(crate) user_source: Source,
    pub(crate) group_source: Source,
}

/// Resolves a user name or numeric uid.
pub(crate) fn user(text: &str) -> Result<(String, Uid, Gid), String> {
    let found = match text.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(text),
    };
    match found {
        Ok(Some(user)) => Ok((user.name, user.uid, user.gid)),
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
        (self.user.as_ref().map(|(_, uid, _)| *uid), self.group)
    }

    /// The group a worker runs as: the one given, or else the user's own.
    pub(crate) fn primary_group(&self) -> Option<Gid> {
        self.group.or(self.user.as_ref().map(|(_, _, gid)| *gid))
    }

    /// Whether this process may start workers as these credentials: root may switch to anyone;
    /// any other user only "switches" to itself, and then nothing is changed (it may not set
    /// groups). Checked before anything is bound, so that a worker never finds out instead.
    pub(crate) fn check_switch(&self) -> Result<(), String> {
        if Uid::effective().is_root() {
            return Ok(());
        }
        if let Some((name, uid, _)) = &self.user
            && *uid != Uid::effective()
        {
            return Err(format!(
                "user '{name}' ({}): only root can run workers as another user, and prefork runs as uid {}",
                self.user_source,
                Uid::effective()
            ));
        }
        match (self.primary_group(), &self.user) {
            (Some(gid), _) if gid == Gid::effective() => Ok(()),
            (None, _) => Ok(()),
            (Some(gid), Some((name, ..))) if self.group.is_none() => Err(format!(
                "user '{name}' ({}): only root can run workers as its group {gid}, and prefork runs as gid {}",
                self.user_source,
                Gid::effective()
            )),
            (Some(gid), _) => Err(format!(
                "group {gid} ({}): only root can run workers as another group, and prefork runs as gid {}",
                self.group_source,
                Gid::effective()
            )),
        }
    }

    /// Whether workers change credentials at all: only root does (see [`Self::check_switch`]).
    pub(crate) fn switches(&self) -> bool {
        (self.user.is_some() || self.group.is_some()) && Uid::effective().is_root()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_alone_runs_in_its_own_group_and_a_group_given_wins() {
        let root = user("0").unwrap();
        assert_eq!(
            root,
            ("root".to_string(), Uid::from_raw(0), Gid::from_raw(0))
        );
        let mut credentials = Credentials {
            user: Some(root),
            ..Credentials::default()
        };
        assert_eq!(credentials.primary_group(), Some(Gid::from_raw(0)));
        credentials.group = Some(Gid::from_raw(5));
        assert_eq!(credentials.primary_group(), Some(Gid::from_raw(5)));
        assert_eq!(Credentials::default().primary_group(), None);
    }
}
