//! Whether the storage root is on a local filesystem, decided once at start-up.
//!
//! Making a build's folder and its log is a few microseconds on a local disk: then the worker
//! does it on its event loop. On network storage (NFS, SMB, FUSE, Ceph...) each metadata
//! operation is a round trip to the file server and may stall for seconds, so there it goes
//! to the blocking pool. The hop to a pool thread and back (two thread wake-ups) cost more
//! than the folder and the file themselves on a local disk (`make bench`, docs/performance.md).

use std::path::Path;

/// Whether `path` (or, while it does not exist yet, its nearest existing ancestor) is on a
/// filesystem the kernel serves locally. Unknown counts as remote: the safe side.
pub(crate) fn is_local(path: &Path) -> bool {
    // A relative root (the default `var/storage`) is judged from the working folder.
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    path.ancestors()
        .find_map(fs_type)
        .is_some_and(|t| !is_network(t))
}

#[cfg(target_os = "linux")]
fn fs_type(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    #[expect(unsafe_code, reason = "statfs has no wrapper in std")]
    // SAFETY: `c` is a NUL-terminated path and `st` a buffer of the type statfs fills.
    let st = unsafe {
        if libc::statfs(c.as_ptr(), st.as_mut_ptr()) != 0 {
            return None;
        }
        st.assume_init()
    };
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's width differs between targets"
    )]
    Some(st.f_type as i64)
}

#[cfg(not(target_os = "linux"))]
fn fs_type(_path: &Path) -> Option<i64> {
    None
}

/// Filesystem magic numbers (`statfs(2)`) of network and user-space filesystems.
fn is_network(f_type: i64) -> bool {
    const NETWORK: [i64; 13] = [
        0x6969,      // NFS
        0x517B,      // SMB
        0xFF53_4D42, // CIFS
        0xFE53_4D42, // SMB2
        0x6573_5546, // FUSE (sshfs, s3fs, glusterfs, gcsfuse...)
        0x00C3_6400, // Ceph
        0x0102_1997, // 9P
        0x5346_414F, // AFS
        0x6B41_4653, // kAFS
        0x7375_7245, // Coda
        0x0116_1970, // GFS2
        0x7461_636F, // OCFS2
        0x0BD0_0BD0, // Lustre
    ];
    NETWORK.contains(&f_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_filesystems_are_not_local() {
        assert!(is_network(0x6969), "NFS");
        assert!(is_network(0x6573_5546), "FUSE");
        assert!(!is_network(0xEF53), "ext4");
        assert!(!is_network(0x0102_1994), "tmpfs");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_folder_not_made_yet_is_judged_by_its_nearest_existing_ancestor() {
        let dir = std::env::temp_dir();
        assert_eq!(
            is_local(&dir.join("kiln-not-made-yet/jobs")),
            is_local(&dir),
            "same filesystem"
        );
        assert!(fs_type(&dir).is_some());
        assert_eq!(
            is_local(Path::new("kiln-not-made-yet/storage")),
            is_local(&std::env::current_dir().expect("working folder")),
            "a relative root is judged from the working folder"
        );
    }
}
