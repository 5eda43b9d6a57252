use resumable::{Classify, RetryPolicy, resumable, step};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Error {
    Busy,
    Invalid,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl Classify for Error {
    fn is_terminal(&self) -> bool {
        matches!(self, Error::Invalid)
    }
}

fn check(n: u64) -> Result<u64, Error> {
    if n > 100 { Err(Error::Invalid) } else if n == 13 { Err(Error::Busy) } else { Ok(n) }
}

#[resumable(retry = RetryPolicy::exponential(5))]
async fn process(items: Vec<u64>, fast: bool) -> Result<u64, Error> {
    let mut total = 0;
    for item in &items {
        let checked = step!("check", retry = RetryPolicy::never(), { check(*item)? });
        total += checked;
    }
    let mut i = 0;
    while i < 2 {
        total += step!("while", { i });
        i += 1;
    }
    let bonus = match total {
        0 => step!("zero", { 0 }),
        _ if fast => step!("fast", { 1 }),
        _ => {
            let (a, b) = tokio::try_join!(
                async { Ok::<_, Error>(step!("left", { 2 })) },
                async { Ok::<_, Error>(step!("right", { 3 })) },
            )?;
            a + b
        }
    };
    Ok(total + bonus)
}

fn main() {}
