//! The seed example: a profile-image upload that writes to two systems — a
//! blob store (a directory) and a database (a SQLite table, separate from
//! the journal) — and survives the process dying anywhere in between.
//!
//! ```text
//! cargo run --example profile_image                     # the guided demo
//! cargo run --example profile_image -- upload --key k1 --user 42 --crash-at after-upload
//! cargo run --example profile_image -- upload --key k1 --user 42      # resumes k1
//! cargo run --example profile_image -- complete         # a completer finishes what nobody retries
//! cargo run --example profile_image -- status --key k1
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use resumable::{Classify, Completer, Runtime, SqliteJournal, resumable, step, workflow};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(about = "Upload a profile image durably; crash it on purpose; resume it.")]
struct Cli {
    /// Where the journal, the blob store and the database live.
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// The guided tour: every crash point, then the completer (the default).
    Demo,
    /// Upload (or resume uploading) one image.
    Upload {
        /// The run key: the client's idempotency key for this upload.
        #[arg(long)]
        key: String,
        #[arg(long, default_value_t = 42)]
        user: u64,
        /// Abort the process (std::process::abort) at this point.
        #[arg(long, value_enum)]
        crash_at: Option<CrashPoint>,
    },
    /// Run a completer until no incomplete run is left.
    Complete,
    /// Show a run's status and steps.
    Status {
        #[arg(long)]
        key: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum CrashPoint {
    /// Before anything is written.
    BeforeUpload,
    /// After the blob is written, before the journal records it.
    AfterUpload,
    /// After the blob is journaled, before the database write.
    BeforeReference,
    /// After both writes, before the response is journaled.
    BeforeResponse,
}

#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
enum UploadError {
    #[error("blob store: {0}")]
    Blob(String),
    #[error("database: {0}")]
    Db(String),
    #[error("the image is empty")]
    EmptyImage,
}

impl Classify for UploadError {
    fn is_terminal(&self) -> bool {
        matches!(self, UploadError::EmptyImage)
    }
}

/// A blob store: one file per key under a directory. Every PUT is also
/// appended to `uploads.log`, so we can count real uploads.
struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    async fn put(&self, key: &str, bytes: &[u8], idempotency_key: &str) -> Result<(), UploadError> {
        let err = |e: std::io::Error| UploadError::Blob(e.to_string());
        let path = self.root.join(key);
        tokio::fs::create_dir_all(path.parent().expect("keys have a directory"))
            .await
            .map_err(err)?;
        tokio::fs::write(&path, bytes).await.map_err(err)?;
        let line = format!("PUT {key} (idempotency key {idempotency_key})\n");
        let log = self.root.join("uploads.log");
        let mut previous = tokio::fs::read_to_string(&log).await.unwrap_or_default();
        previous.push_str(&line);
        tokio::fs::write(log, previous).await.map_err(err)
    }

    fn uploads_of(&self, key: &str) -> usize {
        let log = std::fs::read_to_string(self.root.join("uploads.log")).unwrap_or_default();
        log.lines()
            .filter(|l| l.starts_with(&format!("PUT {key} ")))
            .count()
    }
}

/// The application's own database (not the journal).
struct Db {
    conn: Mutex<rusqlite::Connection>,
}

impl Db {
    fn open(path: &Path) -> rusqlite::Result<Db> {
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS avatars (user INTEGER PRIMARY KEY, blob_key TEXT NOT NULL)",
        )?;
        Ok(Db {
            conn: Mutex::new(conn),
        })
    }

    /// Idempotent: writing the same reference twice leaves one row.
    fn set_avatar(&self, user: u64, blob_key: &str) -> Result<(), UploadError> {
        let conn = self.conn.lock().unwrap();
        conn.execute(
            "INSERT INTO avatars (user, blob_key) VALUES (?1, ?2) ON CONFLICT(user) DO UPDATE SET blob_key = ?2",
            rusqlite::params![user as i64, blob_key],
        )
        .map(drop)
        .map_err(|e| UploadError::Db(e.to_string()))
    }

    fn avatar(&self, user: u64) -> Option<String> {
        let conn = self.conn.lock().unwrap();
        conn.query_row(
            "SELECT blob_key FROM avatars WHERE user = ?1",
            [user as i64],
            |r| r.get(0),
        )
        .ok()
    }
}

struct App {
    blobs: BlobStore,
    db: Db,
    crash_at: Option<CrashPoint>,
    /// Steps whose bodies ran in this process (the rest were replayed).
    executed: Mutex<Vec<&'static str>>,
}

impl App {
    fn open(dir: &Path, crash_at: Option<CrashPoint>) -> App {
        App {
            blobs: BlobStore {
                root: dir.join("blobs"),
            },
            db: Db::open(&dir.join("app.db")).expect("open the application database"),
            crash_at,
            executed: Mutex::new(Vec::new()),
        }
    }

    fn crash_if(&self, point: CrashPoint) {
        if self.crash_at == Some(point) {
            eprintln!("  [child] aborting the process at {point:?}");
            std::process::abort();
        }
    }

    fn ran(&self, step: &'static str) {
        self.executed.lock().unwrap().push(step);
    }

    #[resumable(name = "upload_profile_image")]
    async fn upload_profile_image(&self, user: u64, image: Vec<u8>) -> Result<String, UploadError> {
        self.crash_if(CrashPoint::BeforeUpload);
        let blob_key = step!("store_blob", |step| {
            self.ran("store_blob");
            if image.is_empty() {
                Err(UploadError::EmptyImage)?;
            }
            let key = format!("avatars/{user}-{:08x}.png", checksum(&image));
            // The idempotency key lets a real blob store deduplicate a PUT
            // that is retried after a crash.
            self.blobs
                .put(&key, &image, &step.idempotency_key())
                .await?;
            self.crash_if(CrashPoint::AfterUpload);
            key
        });
        self.crash_if(CrashPoint::BeforeReference);
        step!("save_reference", {
            self.ran("save_reference");
            self.db.set_avatar(user, &blob_key)?;
        });
        self.crash_if(CrashPoint::BeforeResponse);
        let url = step!("respond", {
            self.ran("respond");
            format!("https://cdn.example/{blob_key}")
        });
        Ok(url)
    }
}

fn checksum(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

fn image_of(user: u64) -> Vec<u8> {
    format!("\u{89}PNG fake image of user {user}").into_bytes()
}

/// Short leases: a crashed process's run is free again after a second.
const LEASE: Duration = Duration::from_secs(1);

async fn runtime(dir: &Path) -> Runtime {
    let journal = SqliteJournal::open(dir.join("journal.db"))
        .await
        .expect("open the journal");
    Runtime::builder(journal).lease_duration(LEASE).build()
}

async fn upload(
    dir: &Path,
    key: &str,
    user: u64,
    crash_at: Option<CrashPoint>,
) -> Result<(), resumable::Error> {
    let rt = runtime(dir).await;
    let app = App::open(dir, crash_at);
    let outcome = loop {
        match rt
            .run(key, app.upload_profile_image(user, image_of(user)))
            .await
        {
            Err(resumable::Error::Busy { owner, .. }) => {
                println!(
                    "  run {key} is leased by {owner} (a crashed process?); waiting for its lease to expire"
                );
                tokio::time::sleep(LEASE / 2).await;
            }
            other => break other?,
        }
    };
    match &outcome {
        Ok(url) => println!("  run {key}: completed -> {url}"),
        Err(e) => println!("  run {key}: failed for good -> {e}"),
    }
    let executed = app.executed.lock().unwrap().clone();
    if let Some(info) = rt.run_info(key).await? {
        for step in &info.steps {
            let name = step.id.split('#').next().unwrap_or_default();
            let how = if executed.contains(&name) {
                "executed in this process"
            } else {
                "replayed from the journal"
            };
            println!("    {:<18} {how} (attempts: {})", step.id, step.attempts);
        }
    }
    let blob = format!("avatars/{user}-{:08x}.png", checksum(&image_of(user)));
    println!(
        "  blob uploads of {blob}: {}; database row: {:?}",
        app.blobs.uploads_of(&blob),
        app.db.avatar(user)
    );
    Ok(())
}

async fn complete(dir: &Path) -> Result<(), resumable::Error> {
    let rt = runtime(dir).await;
    let app = App::open(dir, None);
    let completer = Completer::new(&rt).register(workflow!(App::upload_profile_image), app)?;
    // Runs whose crashed owner still holds a lease become due when it expires.
    tokio::time::sleep(LEASE + Duration::from_millis(200)).await;
    let report = completer.run_until_idle().await?;
    println!(
        "  completer finished {} run(s), {} interrupted",
        report.finished, report.interrupted
    );
    Ok(())
}

async fn status(dir: &Path, key: &str) -> Result<(), resumable::Error> {
    let rt = runtime(dir).await;
    match rt.run_info(key).await? {
        None => println!("no run {key}"),
        Some(info) => {
            println!(
                "run {key}: {:?}, executions: {}, last error: {:?}",
                info.status, info.executions, info.last_error
            );
            for s in info.steps {
                println!("  {:<18} {:?}, attempts: {}", s.id, s.status, s.attempts);
            }
        }
    }
    Ok(())
}

/// Runs this program again as a child that aborts at `point`.
fn crashing_child(dir: &Path, key: &str, user: u64, point: CrashPoint) {
    let point = point
        .to_possible_value()
        .expect("no skipped variants")
        .get_name()
        .to_owned();
    let status = Command::new(std::env::current_exe().expect("own path"))
        .args([
            "upload",
            "--key",
            key,
            "--user",
            &user.to_string(),
            "--crash-at",
            &point,
            "--dir",
        ])
        .arg(dir)
        .status()
        .expect("start the child process");
    println!(
        "  child process ended: {status} (crashed: {})",
        !status.success()
    );
}

async fn demo(dir: &Path) -> Result<(), resumable::Error> {
    println!("Data in {}\n", dir.display());
    let points = [
        CrashPoint::BeforeUpload,
        CrashPoint::AfterUpload,
        CrashPoint::BeforeReference,
        CrashPoint::BeforeResponse,
    ];
    for (i, point) in points.into_iter().enumerate() {
        let key = format!("upload-{}-{point:?}", 40 + i);
        let user = 40 + i as u64;
        println!(
            "== crash {point:?}: the first attempt dies, the client retries with the same key"
        );
        crashing_child(dir, &key, user, point);
        upload(dir, &key, user, None).await?;
        println!();
    }
    println!("== nobody retries: three uploads crash, a completer finishes them");
    for (i, point) in [
        CrashPoint::AfterUpload,
        CrashPoint::BeforeReference,
        CrashPoint::BeforeResponse,
    ]
    .into_iter()
    .enumerate()
    {
        crashing_child(dir, &format!("orphan-{i}"), 50 + i as u64, point);
    }
    complete(dir).await?;
    for i in 0..3 {
        status(dir, &format!("orphan-{i}")).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Cmd::Demo);
    let dir = match (cli.dir, &command) {
        (Some(dir), _) => dir,
        (None, Cmd::Demo) => {
            let dir = std::env::temp_dir().join("resumable-profile-image-demo");
            let _ = std::fs::remove_dir_all(&dir);
            dir
        }
        (None, _) => std::env::temp_dir().join("resumable-profile-image"),
    };
    std::fs::create_dir_all(&dir)?;
    match command {
        Cmd::Demo => demo(&dir).await?,
        Cmd::Upload {
            key,
            user,
            crash_at,
        } => upload(&dir, &key, user, crash_at).await?,
        Cmd::Complete => complete(&dir).await?,
        Cmd::Status { key } => status(&dir, &key).await?,
    }
    Ok(())
}
