//! Compile-time checks of `#[resumable]` and `step!`: the messages are the product.
//! The `.stderr` snapshots belong to rustc 1.95; bless with `TRYBUILD=overwrite`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
