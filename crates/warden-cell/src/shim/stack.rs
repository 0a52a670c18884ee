//! Keeping an idle shim small: the one output buffer lives on the stack, and once the cell
//! runs, the stack pages that start-up dirtied (and the still unused pages of that buffer) go
//! back to the kernel. Hundreds of shims on a host make every KiB count.

use crate::sys;
use std::mem::MaybeUninit;

/// Size of the one buffer that carries workload output; lives on the stack.
pub(crate) const COPY_BUF: usize = 8 * 1024;

/// The output buffer. Left uninitialised: zeroing would dirty 8 KiB even for a silent workload.
pub(crate) type CopyBuf = [MaybeUninit<u8>; COPY_BUF];

/// Hands back to the kernel the stack pages that start-up (config parsing, file system calls)
/// dirtied below the current frame, and the whole pages inside the still unused output buffer
/// (dirtied by the runtime before `main`): a quiet workload's shim never touches them again,
/// and any that are touched come back zero-filled. Worth 10–20 KiB per shim.
#[inline(never)]
pub(crate) fn release_startup_stack(buf: &mut CopyBuf) {
    /// Pages kept below this frame for the madvise call itself and the loop's shallow calls.
    const HEADROOM_PAGES: usize = 2;
    let Some(page) = sys::page_size() else {
        return;
    };
    let marker = 0u8;
    let here = std::hint::black_box(&marker) as *const u8 as usize;
    // Never reach below the stack mapping itself: whatever lies there is not ours to zap.
    let Some(stack_start) = mapping_start(here) else {
        return;
    };
    let top = (here & !(page - 1)).saturating_sub(HEADROOM_PAGES * page);
    if top <= stack_start {
        return;
    }
    // SAFETY: [stack_start, top) lies inside this thread's stack mapping and entirely below
    // the current frame, so it holds no live data: signals are blocked and read through a
    // signalfd, so no handler can be running on it, and the headroom covers the madvise call
    // itself. MADV_DONTNEED on private anonymous memory only turns the pages back into
    // zero-fill-on-demand ones.
    unsafe {
        libc::madvise(stack_start as *mut libc::c_void, top - stack_start, libc::MADV_DONTNEED);
    }
    let buf_start = buf.as_mut_ptr() as usize;
    let first = (buf_start + page - 1) & !(page - 1);
    let end = (buf_start + COPY_BUF) & !(page - 1);
    if first < end {
        // SAFETY: [first, end) are whole pages inside `buf`, which we borrow mutably and whose
        // bytes are `MaybeUninit` that are only ever read after `read(2)` wrote them; after
        // MADV_DONTNEED they read as zeros, a valid value for them.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED);
        }
    }
}

/// Start address of the mapping in `/proc/self/maps` that contains `addr`.
fn mapping_start(addr: usize) -> Option<usize> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|line| {
        let range = line.split(' ').next()?;
        let (start, end) = range.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        (start <= addr && addr < end).then_some(start)
    })
}
