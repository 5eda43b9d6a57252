//! Opening the journal the command names: a SQLite file or a PostgreSQL
//! database.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use resumable::Journal;

use crate::Failure;

/// Where the journal is.
#[derive(Args)]
pub struct JournalArgs {
    /// The SQLite journal file (it must exist).
    #[arg(long, env = "RESUMABLE_DB", global = true, conflicts_with = "url")]
    db: Option<PathBuf>,
    /// The PostgreSQL database, as a URL (`postgres://user@host/db`) or a
    /// `host=… user=…` string.
    #[arg(long, env = "RESUMABLE_URL", global = true, hide_env_values = true)]
    url: Option<String>,
    /// The PostgreSQL schema holding the journal.
    #[arg(long, default_value = "resumable", global = true)]
    schema: String,
}

/// Opens the journal; a missing file or an unreachable server is a failure
/// with a one-line message.
pub async fn open(args: &JournalArgs) -> Result<Arc<dyn Journal>, Failure> {
    match (&args.db, &args.url) {
        (Some(path), _) => {
            if !path.is_file() {
                return Err(Failure {
                    message: format!("no journal file at {}", path.display()),
                    code: 1,
                });
            }
            let journal = resumable::SqliteJournal::open(path).await?;
            Ok(Arc::new(journal))
        }
        (None, Some(url)) => open_postgres(url, &args.schema).await,
        (None, None) => Err(Failure {
            message: "name a journal with --db FILE or --url POSTGRES_URL (or RESUMABLE_DB, RESUMABLE_URL)".into(),
            code: 2,
        }),
    }
}

#[cfg(feature = "postgres")]
async fn open_postgres(url: &str, schema: &str) -> Result<Arc<dyn Journal>, Failure> {
    let journal = resumable::PostgresJournal::builder(url)
        .schema(schema)
        .application_name("resumable-cli")
        .pool_size(2)
        .notifications(false)
        .connect_timeout(Duration::from_secs(5))
        .reconnect_timeout(Duration::from_secs(5))
        .open()
        .await?;
    Ok(Arc::new(journal))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_: &str, _: &str) -> Result<Arc<dyn Journal>, Failure> {
    let _ = Duration::ZERO;
    Err(Failure {
        message: "this build of the tool has no PostgreSQL support (feature `postgres`)".into(),
        code: 1,
    })
}
