use resumable::{StepContext, resumable, step};

static CONFIG: Config = Config { limit: 10 };

struct Config {
    limit: u64,
}

/// Every way of writing a step, and dependencies of every kind.
#[resumable]
async fn forms(#[dep] config: &'static Config, #[dep] shared: std::sync::Arc<String>, n: u64) -> Result<u64, String> {
    let _ = shared;
    let typed = step!("typed", |s: StepContext| s.attempt() as u64);
    step! { "statement", { let _ = n; } }
    let limited = resumable::step!("qualified", { n.min(config.limit) });
    'outer: for i in 0..3u64 {
        let inner = step!("labels", {
            let mut found = 0;
            'inner: for j in 0..10u64 {
                if j == i {
                    found = j;
                    break 'inner;
                }
            }
            found
        });
        if inner == 2 {
            break 'outer;
        }
    }
    Ok(typed + limited)
}

fn main() {
    let _ = forms(&CONFIG, std::sync::Arc::new(String::new()), 3);
    let _ = resumable::workflow!(forms);
}
