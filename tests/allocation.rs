//! What decoding a crafted record may allocate, measured by a counting
//! allocator: a length prefix never makes decoding set aside more than the
//! record could hold.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use resumable::{Bincode, Codec};

/// The system allocator, keeping the largest single allocation asked for.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::SeqCst);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A decode of a crafted record: whether it was refused.
type Refused<'a> = Box<dyn Fn() -> bool + 'a>;

/// The largest allocation `decode` made.
fn largest_allocation(decode: impl FnOnce()) -> usize {
    LARGEST.store(0, Ordering::SeqCst);
    decode();
    LARGEST.load(Ordering::SeqCst)
}

#[test]
fn a_length_prefix_never_allocates_more_than_the_record_holds() {
    // 6 bytes claiming a string of 2^28 - 1 bytes (bincode's own limit is
    // 256 MiB): this asked for 268 MB before it failed.
    let mut string = vec![252u8];
    string.extend_from_slice(&((1u32 << 28) - 1).to_le_bytes());
    string.push(b'x');
    // 9 bytes claiming 2^24 `u64`s (128 MiB, under bincode's own limit).
    let mut longs = vec![253u8];
    longs.extend_from_slice(&(1u64 << 24).to_le_bytes());
    let cases: [(&str, Refused<'_>); 3] = [
        (
            "String",
            Box::new(|| Bincode::decode::<String>(&string).is_err()),
        ),
        (
            "Vec<u8>",
            Box::new(|| Bincode::decode::<Vec<u8>>(&string).is_err()),
        ),
        (
            "Vec<u64>",
            Box::new(|| Bincode::decode::<Vec<u64>>(&longs).is_err()),
        ),
    ];
    for (ty, decode) in cases {
        let mut refused = false;
        let largest = largest_allocation(|| refused = decode());
        assert!(refused, "{ty}: the record must be refused");
        assert!(
            largest < 4096,
            "{ty}: decoding allocated {largest} bytes at once"
        );
    }
}
