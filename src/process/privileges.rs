//! Dropping root: once the sockets are bound and the files opened, the master (and so every
//! worker it forks) runs as the configured user and group, with that user's supplementary
//! groups.

use std::ffi::CString;

use nix::unistd::{Gid, User, initgroups, setgid, setgroups, setuid};

use crate::Error;
use crate::config::Credentials;

/// Switches this process to `credentials`: supplementary groups, then the group, then the
/// user, as only root may do the first two.
pub(crate) fn drop_to(credentials: &Credentials) -> Result<(), Error> {
    let fail = |what: &str, e: nix::Error| Error::config(format!("cannot {what}: {e}"));
    match (&credentials.user, credentials.group) {
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
