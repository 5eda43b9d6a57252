//! What decoding a crafted record may allocate, measured by a counting
//! allocator: a length prefix never makes decoding set aside more than the
//! record could hold, and what a decoded value holds in memory is bounded
//! by the record's size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

use resumable::{Bincode, Codec};

/// The system allocator, keeping, for the thread being measured, the
/// largest single allocation asked for and the most bytes live at once
/// (other threads, such as the test harness's, do not count).
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    static MEASURED: Cell<bool> = const { Cell::new(false) };
}

fn measured() -> bool {
    MEASURED.try_with(Cell::get).unwrap_or(false)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if measured() {
            let size = layout.size() as isize;
            LARGEST.fetch_max(layout.size(), Ordering::SeqCst);
            let live = LIVE.fetch_add(size, Ordering::SeqCst) + size;
            PEAK.fetch_max(live, Ordering::SeqCst);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if measured() {
            LIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Runs `f` with this thread's allocations counted, one measurement at a
/// time (the counters are the process's).
fn measuring<T>(f: impl FnOnce() -> T) -> T {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    LARGEST.store(0, Ordering::SeqCst);
    LIVE.store(0, Ordering::SeqCst);
    PEAK.store(0, Ordering::SeqCst);
    MEASURED.with(|m| m.set(true));
    let out = f();
    MEASURED.with(|m| m.set(false));
    out
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// How many bytes more than before `decode` were live at once while it ran.
fn peak_growth(decode: impl FnOnce()) -> usize {
    measuring(|| {
        decode();
        PEAK.load(Ordering::SeqCst).max(0) as usize
    })
}

/// A decode of a crafted record: whether it was refused.
type Refused<'a> = Box<dyn Fn() -> bool + 'a>;

/// The largest allocation `decode` made.
fn largest_allocation(decode: impl FnOnce()) -> usize {
    measuring(|| {
        decode();
        LARGEST.load(Ordering::SeqCst)
    })
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

#[test]
fn what_a_value_holds_in_memory_is_bounded_by_its_record() {
    // 4 KiB in memory for each one-byte `None`: 60,000 of them in a 60 KB
    // record asked for 245 MB (16 MiB of them would ask for 68 GB).
    type Sparse = Vec<Option<[[u64; 32]; 16]>>;
    let mut nones = vec![251u8];
    nones.extend_from_slice(&60_000u16.to_le_bytes());
    nones.extend(std::iter::repeat_n(0u8, 60_000));
    let mut refused = false;
    let grew = peak_growth(|| refused = Bincode::decode::<Sparse>(&nones).is_err());
    assert!(refused, "the record must be refused");
    // 64 MiB plus 16 bytes per byte of the record, up to three times over
    // while a `Vec` doubles (its old and new buffers are live together).
    let bound = 3 * ((64 << 20) + 16 * nones.len());
    assert!(grew < bound, "decoding took {grew} bytes at once");
}
