//! Contract 6: a run resumes only under code with its fingerprint, or code
//! that declares that fingerprint compatible.

mod common;

use common::memory_runtime;
use resumable::{Error, resumable, step, workflow};

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("never")]
struct Never;

/// `W(true)` is a deployment whose last step is interrupted.
struct W(bool);

impl W {
    #[resumable(name = "versioned")]
    async fn v1(&self) -> Result<u32, Never> {
        let a = step!("a", { 1 });
        step!("stop", {
            if self.0 {
                panic!("interrupted");
            }
        });
        Ok(a)
    }

    /// A new step between `a` and `stop`: another step structure.
    #[resumable(name = "versioned")]
    async fn v2(&self) -> Result<u32, Never> {
        let a = step!("a", { 1 });
        let b = step!("b", { 2 });
        step!("stop", {
            if self.0 {
                panic!("interrupted");
            }
        });
        Ok(a + b)
    }

    /// The same structure, declared able to resume runs of `v1`.
    #[resumable(name = "versioned", compatible = ["398fc6e935b9737d"])]
    async fn v3(&self) -> Result<u32, Never> {
        let a = step!("a", { 1 });
        let b = step!("b", { 2 });
        step!("stop", {
            if self.0 {
                panic!("interrupted");
            }
        });
        Ok(a + b)
    }
}

#[test]
fn fingerprints_are_stable_and_follow_the_step_structure() {
    let (v1, v2, v3) = (workflow!(W::v1), workflow!(W::v2), workflow!(W::v3));
    // Pinned: a fingerprint that changed between releases would strand every
    // incomplete run. If this fails, the fingerprint computation changed.
    assert_eq!(
        format!("{:016x}", v1.meta().fingerprint),
        "398fc6e935b9737d"
    );
    assert_ne!(v1.meta().fingerprint, v2.meta().fingerprint);
    assert_eq!(v2.meta().fingerprint, v3.meta().fingerprint);
    assert!(v3.meta().accepts(v1.meta().fingerprint) && !v2.meta().accepts(v1.meta().fingerprint));
}

#[tokio::test]
async fn a_changed_workflow_refuses_old_runs_unless_declared_compatible() {
    let (rt, _) = memory_runtime();
    rt.run("r", W(true).v1()).await.unwrap_err();

    let err = rt.run("r", W(false).v2()).await.unwrap_err();
    match &err {
        Error::VersionMismatch {
            run,
            workflow,
            journaled,
            current,
        } => {
            assert_eq!((run.as_str(), workflow.as_str()), ("r", "versioned"));
            assert_eq!(*journaled, workflow!(W::v1).meta().fingerprint);
            assert_eq!(*current, workflow!(W::v2).meta().fingerprint);
        }
        other => panic!("expected VersionMismatch, got {other}"),
    }
    assert!(
        err.to_string()
            .contains("compatible = [\"398fc6e935b9737d\"]"),
        "{err}"
    );

    assert_eq!(rt.run("r", W(false).v3()).await.unwrap(), Ok(3));
}

#[resumable(name = "retyped")]
async fn retyped_v1(order: u32) -> Result<u32, Never> {
    let n = step!("load", {
        if order > 0 {
            panic!("interrupted");
        }
        order
    });
    Ok(n)
}

/// The next version takes another input type.
#[resumable(name = "retyped")]
async fn retyped_v2(order: String) -> Result<u32, Never> {
    let n = step!("load", { order.len() as u32 });
    Ok(n)
}

#[tokio::test]
async fn a_new_version_with_another_input_type_is_a_version_mismatch_not_an_input_mismatch() {
    let (rt, _) = memory_runtime();
    rt.run("t", retyped_v1(3)).await.unwrap_err();
    let err = rt.run("t", retyped_v2("3".into())).await.unwrap_err();
    assert!(matches!(err, Error::VersionMismatch { .. }), "{err}");
}
