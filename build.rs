//! Links the server's executables with packed relative relocations (`DT_RELR`) where the C
//! library can load them.
//!
//! A position-independent Rust executable carries about 10 000 relative relocations; as
//! `RELA` entries they take 230 KiB, which the dynamic loader reads whole into every process
//! at start. Packed, they take 3 KiB: the idle master's resident set drops by about 300 KiB.
//! glibc loads `DT_RELR` from 2.36 on, and a binary linked with it names that requirement
//! (`GLIBC_ABI_DT_RELR`), so it fails to start on an older glibc with a clear message instead
//! of crashing. It is turned on only when building for the machine that builds, and that
//! machine's glibc is new enough: a build on an older system, or a cross build, stays as it was.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let native = std::env::var("TARGET").ok() == std::env::var("HOST").ok();
    let gnu = std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|env| env == "gnu");
    if native && gnu && host_glibc_at_least(2, 36) {
        for kind in ["bins", "examples"] {
            println!("cargo:rustc-link-arg-{kind}=-Wl,-z,pack-relative-relocs");
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn host_glibc_at_least(major: u32, minor: u32) -> bool {
    unsafe extern "C" {
        fn gnu_get_libc_version() -> *const std::ffi::c_char;
    }
    // SAFETY: glibc returns a pointer to a static NUL-terminated string such as "2.36".
    let version = unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) };
    let mut parts = version
        .to_str()
        .unwrap_or("")
        .split('.')
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn host_glibc_at_least(_major: u32, _minor: u32) -> bool {
    false
}
