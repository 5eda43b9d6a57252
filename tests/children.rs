//! Child workflows: `child!` on every journal. A parent starts children as
//! runs of their own, waits for them holding no lease, adopts the ones it
//! started before a crash, and cancelling it cancels them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

mod common;

use common::every_journal;
use resumable::{
    Completer, Error, Journal, RunState, RunStatus, Runtime, WorkflowRef, child, resumable, step,
    workflow,
};

#[derive(Default)]
struct Shop {
    packed: AtomicU32,
}

const PACK: WorkflowRef<(u32,), Result<String, String>> = WorkflowRef::named("children::pack");
const ORDER: WorkflowRef<(u32,), Result<Vec<String>, String>> =
    WorkflowRef::named("children::order");

impl Shop {
    #[resumable(name = "children::pack")]
    async fn pack(&self, item: u32) -> Result<String, String> {
        let n = step!("pack", { self.packed.fetch_add(1, Ordering::SeqCst) + 1 });
        if item == 0 {
            return Err("item 0 is out of stock".into());
        }
        Ok(format!("item {item} packed ({n})"))
    }

    /// One child per item, started together.
    #[resumable(name = "children::order")]
    async fn order(&self, items: u32) -> Result<Vec<String>, String> {
        let mut parcels = Vec::new();
        for item in 1..=items {
            parcels.push(async move { child!("pack", PACK, (item,)) });
        }
        let packed = futures::future::join_all(parcels).await;
        packed.into_iter().collect()
    }
}

fn completer(rt: &Runtime, shop: &Arc<Shop>, with_children: bool) -> Completer {
    let completer = Completer::new(rt)
        .register(workflow!(Shop::order), shop.clone())
        .unwrap();
    match with_children {
        true => completer
            .register(workflow!(Shop::pack), shop.clone())
            .unwrap(),
        false => completer,
    }
}

#[tokio::test]
async fn a_parent_fans_out_children_and_collects_their_outcomes() {
    for (name, journal) in every_journal("children_fan_out").await.0 {
        let rt = Runtime::new(journal);
        let shop = Arc::new(Shop::default());
        let client = rt.client();
        client.submit(&ORDER, "o", (3,)).await.unwrap();
        completer(&rt, &shop, true).run_until_idle().await.unwrap();
        let parcels = client.outcome(&ORDER, "o").await.unwrap().unwrap().unwrap();
        assert_eq!(parcels.len(), 3, "{name}");
        for (i, parcel) in parcels.iter().enumerate() {
            // In the order started, whatever order they ran in.
            assert!(
                parcel.starts_with(&format!("item {} packed", i + 1)),
                "{name}: {parcel}"
            );
        }
        let children = rt.runs().children("o").await.unwrap();
        let keys: Vec<_> = children.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys.len(), 3, "{name}: {keys:?}");
        for child in &children {
            assert!(
                child.key.starts_with("o/child:pack@"),
                "{name}: {}",
                child.key
            );
            assert_eq!(child.parent.as_deref(), Some("o"), "{name}");
            assert_eq!(child.status, RunStatus::Completed, "{name}");
        }
        // Replayed: nothing packed again, no child started again.
        let again = rt.run("o", shop.order(3)).await.unwrap();
        assert_eq!(again.unwrap().len(), 3, "{name}");
        assert_eq!(shop.packed.load(Ordering::SeqCst), 3, "{name}");
        assert_eq!(rt.runs().children("o").await.unwrap().len(), 3, "{name}");
    }
}

#[tokio::test]
async fn a_parent_waits_for_its_child_holding_no_lease() {
    for (name, journal) in every_journal("children_wait").await.0 {
        let rt = Runtime::new(journal.clone());
        let shop = Arc::new(Shop::default());
        match rt.run("w", shop.order(1)).await {
            Err(Error::WaitingForMessage { step, .. }) => {
                assert!(step.starts_with("child-result:pack@"), "{name}: {step}")
            }
            other => panic!("{name}: expected the parent to wait, got {other:?}"),
        }
        let parent = journal.load_run("w").await.unwrap().unwrap().run;
        assert!(parent.lease_owner.is_none(), "{name}");
        assert_eq!(
            rt.run_info("w").await.unwrap().unwrap().status,
            RunStatus::Waiting,
            "{name}"
        );
        // A fork keeping the child's start but not its outcome would wait forever.
        match rt.runs().fork("w", 1, "w-fork").await {
            Err(Error::InvalidFork { run, reason }) => {
                assert_eq!(run, "w", "{name}");
                assert!(reason.contains("child:pack@0#0"), "{name}: {reason}");
            }
            other => panic!("{name}: expected InvalidFork, got {other:?}"),
        }
        assert!(rt.runs().info("w-fork").await.unwrap().is_none(), "{name}");
        // Only the child is due; a completer without the parent's code runs it.
        let children = rt.runs().children("w").await.unwrap();
        assert_eq!(children.len(), 1, "{name}");
        assert_eq!(children[0].status, RunStatus::Pending, "{name}");
        Completer::new(&rt)
            .register(workflow!(Shop::pack), shop.clone())
            .unwrap()
            .run_until_idle()
            .await
            .unwrap();
        // Its end made the parent due: the parent's completer finishes it.
        let report = completer(&rt, &shop, false).run_until_idle().await.unwrap();
        assert_eq!(report.finished, 1, "{name}");
        assert_eq!(
            rt.client().outcome(&ORDER, "w").await.unwrap(),
            Some(Ok(vec!["item 1 packed (1)".to_string()])),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_childs_error_is_its_parents_to_handle() {
    for (name, journal) in every_journal("children_error").await.0 {
        let rt = Runtime::new(journal);
        let shop = Arc::new(Shop::default());
        #[resumable(name = "children::zero")]
        async fn zero() -> Result<String, String> {
            let packed = child!("pack", PACK, (0,));
            Ok(format!("{packed:?}"))
        }
        rt.submit("z", zero()).await.unwrap();
        Completer::new(&rt)
            .register(workflow!(zero), ())
            .unwrap()
            .register(workflow!(Shop::pack), shop.clone())
            .unwrap()
            .run_until_idle()
            .await
            .unwrap();
        const ZERO: WorkflowRef<(), Result<String, String>> = WorkflowRef::named("children::zero");
        assert_eq!(
            rt.client().outcome(&ZERO, "z").await.unwrap(),
            Some(Ok("Err(\"item 0 is out of stock\")".to_string())),
            "{name}"
        );
    }
}

#[tokio::test]
async fn cancelling_a_parent_cancels_its_children() {
    for (name, journal) in every_journal("children_cancel").await.0 {
        let rt = Runtime::new(journal);
        let shop = Arc::new(Shop::default());
        assert!(matches!(
            rt.run("c", shop.order(2)).await,
            Err(Error::WaitingForMessage { .. })
        ));
        rt.runs().cancel("c").await.unwrap();
        let children = rt.runs().children("c").await.unwrap();
        assert_eq!(children.len(), 2, "{name}");
        for child in children {
            assert_eq!(child.status, RunStatus::Cancelled, "{name}: {}", child.key);
        }
        assert_eq!(
            rt.client().status("c").await.unwrap(),
            Some(RunState::Cancelled),
            "{name}"
        );
        completer(&rt, &shop, true).run_until_idle().await.unwrap();
        assert_eq!(shop.packed.load(Ordering::SeqCst), 0, "{name}");
    }
}

#[tokio::test]
async fn a_child_cancelled_alone_stops_its_parent_with_a_typed_error() {
    for (name, journal) in every_journal("children_ended").await.0 {
        let rt = Runtime::builder(journal).dead_letter_after(1).build();
        let shop = Arc::new(Shop::default());
        assert!(matches!(
            rt.run("p", shop.order(1)).await,
            Err(Error::WaitingForMessage { .. })
        ));
        let child = rt.runs().children("p").await.unwrap().remove(0).key;
        rt.runs().cancel(&child).await.unwrap();
        completer(&rt, &shop, false).run_until_idle().await.unwrap();
        let info = rt.run_info("p").await.unwrap().unwrap();
        assert_eq!(info.status, RunStatus::DeadLettered, "{name}");
        let error = info.last_error.unwrap_or_default();
        assert!(
            error.contains(&child) && error.contains("cancelled"),
            "{name}: {error}"
        );
    }
}

#[tokio::test]
async fn a_child_key_another_run_holds_is_refused() {
    let rt = Runtime::new(resumable::MemoryJournal::new());
    #[resumable(name = "children::taken")]
    async fn taken() -> Result<String, String> {
        let packed = child!("pack", PACK, (1,), key = "someone-else")?;
        Ok(packed)
    }
    let client = rt.client();
    client.submit(&PACK, "someone-else", (1,)).await.unwrap();
    match rt.run("t", taken()).await {
        Err(Error::RunExists { run }) => assert_eq!(run, "someone-else"),
        other => panic!("expected RunExists, got {other:?}"),
    }
}
