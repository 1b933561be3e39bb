//! Tables in memory shared by the master and its workers (the balancing board, the metrics):
//! made in a memory file before the first fork, mapped once and never unmapped, and handed as a
//! file to the image an upgrade executes, so that both images and every worker see one table.

use std::ffi::CStr;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;

use nix::errno::Errno;
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap};
use nix::sys::stat::fstat;
use nix::unistd::ftruncate;

/// A table that may live in shared memory.
///
/// # Safety
///
/// The type must be `repr(C)` and made of atomics (and arrays and structs of them) only, so
/// that all-zero bytes are a valid table and every access from any process is atomic.
pub(crate) unsafe trait AtomicTable {}

/// Creates a table of `T`, zeroed, in a new memory file named `name`, and maps it.
pub(crate) fn create<T: AtomicTable>(name: &CStr) -> nix::Result<(NonNull<T>, OwnedFd)> {
    let file = memfd_create(name, MFdFlags::MFD_CLOEXEC)?;
    let len = i64::try_from(size_of::<T>()).expect("a table of some KiB");
    ftruncate(&file, len)?;
    Ok((map(&file)?, file))
}

/// Whether `file` holds a table of `T`: one of another size is another build's table, whose
/// layout this build does not know.
pub(crate) fn fits<T: AtomicTable>(file: impl AsFd) -> nix::Result<bool> {
    Ok(usize::try_from(fstat(file)?.st_size).ok() == Some(size_of::<T>()))
}

/// Maps the table of `T` in `file`, made by [`create`] here or in the image this one replaced;
/// a file of another size (another build's table) is refused with `EINVAL`.
pub(crate) fn map<T: AtomicTable>(file: &OwnedFd) -> nix::Result<NonNull<T>> {
    let len = NonZeroUsize::new(size_of::<T>()).expect("a non-empty table");
    if !fits::<T>(file)? {
        return Err(Errno::EINVAL);
    }
    // SAFETY: the file is exactly one table long; a new file is zeroed, which `AtomicTable`
    // makes a valid table, and an adopted one only ever held atomics.
    let ptr = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            file,
            0,
        )?
    };
    Ok(ptr.cast())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    #[repr(C)]
    struct Two([AtomicU64; 2]);
    // SAFETY: `repr(C)`, and made of atomics only.
    unsafe impl AtomicTable for Two {}

    #[repr(C)]
    struct Three([AtomicU64; 3]);
    // SAFETY: as above.
    unsafe impl AtomicTable for Three {}

    #[test]
    fn a_table_is_adopted_only_by_a_build_of_its_size() {
        let (_, file) = create::<Two>(c"prefork-test").unwrap();
        assert!(fits::<Two>(&file).unwrap() && map::<Two>(&file).is_ok());
        assert!(!fits::<Three>(&file).unwrap());
        assert_eq!(map::<Three>(&file).err(), Some(Errno::EINVAL));
    }
}
