//! Throwaway PostgreSQL schemas for tests.

use std::io::Write as _;

use crate::journal::postgres::{PostgresJournal, PostgresJournalBuilder};

/// The environment variable naming the test server, such as
/// `postgres://postgres@127.0.0.1:5432/test`.
pub const URL_VAR: &str = "RESUMABLE_TEST_POSTGRES_URL";

/// A schema of its own on the server named by [`URL_VAR`], dropped (with
/// everything in it) when this is dropped, even if the test panicked.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use resumable::conformance::postgres::TestSchema;
///
/// let Some(schema) = TestSchema::new("my_test") else {
///     return; // no server configured: skipped, and said so on stderr
/// };
/// let journal = schema.journal().await;
/// # }
/// ```
#[derive(Debug)]
pub struct TestSchema {
    url: String,
    name: String,
}

impl TestSchema {
    /// A fresh schema for the test `test`, or `None` after printing to
    /// stderr that the test is skipped because [`URL_VAR`] is unset.
    pub fn new(test: &str) -> Option<Self> {
        let Ok(url) = std::env::var(URL_VAR) else {
            // Straight to stderr: the test harness would swallow eprintln!.
            let _ = writeln!(
                std::io::stderr(),
                "skipped {test}: {URL_VAR} is not set (point it at a PostgreSQL server to run it)"
            );
            return None;
        };
        let name = format!("rt_{:016x}", fastrand::u64(..));
        Some(TestSchema { url, name })
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A journal builder for this schema.
    pub fn builder(&self) -> PostgresJournalBuilder {
        PostgresJournal::builder(&self.url).schema(&self.name)
    }

    /// A journal in this schema, with default settings.
    ///
    /// # Panics
    /// If the server cannot be reached: under CI that is a failure.
    pub async fn journal(&self) -> PostgresJournal {
        self.builder()
            .open()
            .await
            .unwrap_or_else(|e| panic!("cannot open a journal at {URL_VAR}: {e}"))
    }

    /// A plain connection to the server, for checks a journal cannot make.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {URL_VAR}: {e}"));
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        // On a thread of its own: this may run inside an async test, and
        // must also work while a panic unwinds.
        let url = self.url.clone();
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let (client, connection) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client.batch_execute(&sql).await
            })
            .map_err(std::io::Error::other)
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            let _ = writeln!(
                std::io::stderr(),
                "could not drop test schema {}: {dropped:?}",
                self.name
            );
        }
    }
}
