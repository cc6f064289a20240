//! The global allocator: mimalloc, asked for plain blocks whenever Rust's alignment is one
//! mimalloc gives anyway.
//!
//! `mimalloc::MiMalloc` passes every request to mimalloc's aligned entry point. That entry
//! point serves a block from the size's page only while the page's free list is non-empty;
//! once it runs dry (it is refilled only by the plain entry point) every request of a size
//! that is not a power of two takes the slow path and over-allocates into the next size
//! class: an event of 96 bytes took a 112-byte block, a key state of 144 a 160-byte one, each
//! at about 70 more instructions. mimalloc's blocks are always aligned to 8 bytes (every size
//! class is a multiple of 8), so requests aligned to 8 or less go to the plain entry points.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// mimalloc, with plain (not aligned) requests wherever the alignment allows.
pub struct Allocator;

/// Every mimalloc block is aligned to this.
const PLAIN_ALIGN: usize = 8;

// SAFETY: each method forwards to the mimalloc function with the same contract, choosing the
// plain one only when mimalloc's guaranteed alignment meets `layout.align()`.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= PLAIN_ALIGN {
            // SAFETY: forwarded as documented above.
            unsafe { mi::mi_malloc(layout.size()) as *mut u8 }
        } else {
            // SAFETY: forwarded as documented above.
            unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= PLAIN_ALIGN {
            // SAFETY: forwarded as documented above.
            unsafe { mi::mi_zalloc(layout.size()) as *mut u8 }
        } else {
            // SAFETY: forwarded as documented above.
            unsafe { mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from one of the allocation functions above.
        unsafe { mi::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= PLAIN_ALIGN {
            // SAFETY: forwarded as documented above.
            unsafe { mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8 }
        } else {
            // SAFETY: forwarded as documented above.
            unsafe {
                mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}

unsafe extern "C" {
    /// mimalloc's block size for a request of `size` bytes (`mi_good_size`, in the C library
    /// linked in; the Rust bindings declare it only with a feature that pulls in another crate).
    safe fn mi_good_size(size: usize) -> usize;
}

/// The bytes mimalloc gives a request of `size`: its size class. Small blocks come in steps of
/// 16 bytes (a 56-byte request takes 64), then four classes per power of two; memory figures
/// count these, not what was asked for.
pub fn block_size(size: usize) -> usize {
    mi_good_size(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_are_mimallocs_classes() {
        let classes: Vec<usize> = [8, 16, 17, 25, 32, 56, 64, 80, 96, 112, 113, 128, 129]
            .into_iter()
            .map(block_size)
            .collect();
        assert_eq!(
            classes,
            [8, 16, 32, 32, 32, 64, 64, 80, 96, 112, 128, 128, 160]
        );
    }

    #[test]
    fn blocks_have_the_alignment_asked_for_and_keep_their_contents() {
        let a = Allocator;
        for size in [1usize, 8, 24, 40, 96, 144, 1000, 70_000] {
            for align in [1usize, 8, 16, 64, 4096] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                // SAFETY: non-zero sizes; each block is freed once with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xab, size);
                    let q = a.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "realloc size {size} align {align}");
                    assert!((0..size).all(|i| *q.add(i) == 0xab));
                    a.dealloc(q, Layout::from_size_align_unchecked(size * 3, align));
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
