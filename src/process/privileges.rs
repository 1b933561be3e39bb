//! Dropping root in a worker: right after the fork, before the worker builds its runtime or
//! runs application code, it switches to the configured user and group, with that user's
//! supplementary groups, and can never regain privileges. The master keeps the privileges it
//! started with (it binds on reload, reopens its logs and removes its pid file).

use std::ffi::CString;

use nix::unistd::{initgroups, setgid, setgroups, setuid};

use crate::config::Credentials;

/// Switches this process to `credentials`: supplementary groups, then the group, then the
/// user, as only root may do the first two; then sets no-new-privs, so that neither a setuid
/// executable nor file capabilities give anything back. A process that is not root changes
/// nothing: [`Credentials::check_switch`] let it start only with its own user and group.
pub(crate) fn drop_to(credentials: &Credentials) -> Result<(), String> {
    if !credentials.switches() {
        return Ok(());
    }
    let fail = |what: &str, e: nix::Error| format!("cannot {what}: {e}");
    // Set whenever a user or a group is, and `switches` said one is.
    let Some(gid) = credentials.primary_group() else {
        return Ok(());
    };
    if let Some((name, uid, _)) = &credentials.user {
        let cname = CString::new(name.as_str()).map_err(|_| format!("bad user name {name:?}"))?;
        initgroups(&cname, gid).map_err(|e| fail(&format!("set the groups of {name}"), e))?;
        setgid(gid).map_err(|e| fail("change group", e))?;
        setuid(*uid).map_err(|e| fail(&format!("become {name}"), e))?;
    } else {
        setgroups(&[gid]).map_err(|e| fail("set the groups", e))?;
        setgid(gid).map_err(|e| fail("change group", e))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| fail("set no-new-privs", e))
}
