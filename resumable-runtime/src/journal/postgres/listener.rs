//! Turns `NOTIFY`s on the journal's channel into [`JournalEvent`]s, over
//! one dedicated connection that is reopened whenever it drops.

use std::time::Duration;

use futures_util::future::poll_fn;
use tokio::sync::oneshot;
use tokio_postgres::{AsyncMessage, Config, NoTls};

use super::super::{EventSender, JournalEvent, Timestamp};

/// Payload prefix of a due run: `d:<wake_at ms>`.
pub(super) const DUE: &str = "d:";
/// Payload prefix of a finished run: `f:<run key>`.
pub(super) const FINISHED: &str = "f:";

/// Payload prefix of a message sent: `m:<run key>`.
pub(super) const MESSAGE: &str = "m:";

/// The notification channel of the journal in `schema`.
pub(super) fn channel(schema: &str) -> String {
    format!("resumable_{schema}")
}

fn parse(payload: &str) -> Option<JournalEvent> {
    if let Some(at) = payload.strip_prefix(DUE) {
        return at
            .parse()
            .ok()
            .map(|at| JournalEvent::Due { at: Timestamp(at) });
    }
    if let Some(key) = payload.strip_prefix(MESSAGE) {
        return Some(JournalEvent::Message {
            key: key.to_owned(),
        });
    }
    payload
        .strip_prefix(FINISHED)
        .map(|key| JournalEvent::Finished {
            key: key.to_owned(),
        })
}

/// Listens on `channel` until the task is aborted: after every (re)connect
/// it sends a [`JournalEvent::Resync`], since notifications sent while it
/// was away are lost. `ready` is told when the first `LISTEN` took effect.
pub(super) async fn listen(
    config: Config,
    channel: String,
    events: EventSender,
    ready: oneshot::Sender<()>,
) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(50);
    let mut backoff = FIRST_BACKOFF;
    let mut ready = Some(ready);
    loop {
        let mut listened = false;
        let ended = listen_once(&config, &channel, &events, &mut ready, &mut listened).await;
        if listened {
            backoff = FIRST_BACKOFF;
        }
        match ended {
            Ok(()) => tracing::debug!(channel, "journal listener connection closed; reconnecting"),
            Err(err) => {
                tracing::warn!(channel, error = %err, "journal listener connection failed; reconnecting")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn listen_once(
    config: &Config,
    channel: &str,
    events: &EventSender,
    ready: &mut Option<oneshot::Sender<()>>,
    listened: &mut bool,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let mut messages = std::pin::pin!(async {
        while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(note) = message?
                && let Some(event) = parse(note.payload())
            {
                events.send(event);
            }
        }
        Ok(())
    });
    // The connection must be polled for LISTEN to get its answer.
    let listen = format!("LISTEN \"{channel}\"");
    tokio::select! {
        ended = &mut messages => return ended,
        listening = client.batch_execute(&listen) => listening?,
    }
    *listened = true;
    events.send(JournalEvent::Resync);
    if let Some(ready) = ready.take() {
        let _ = ready.send(());
    }
    let ended = messages.await;
    drop(client);
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_into_events() {
        assert_eq!(
            parse("d:1700000000000"),
            Some(JournalEvent::Due {
                at: Timestamp(1_700_000_000_000)
            })
        );
        assert_eq!(
            parse("f:order:42"),
            Some(JournalEvent::Finished {
                key: "order:42".into()
            })
        );
        assert_eq!(
            parse("m:order:42"),
            Some(JournalEvent::Message {
                key: "order:42".into()
            })
        );
        assert_eq!(parse("d:soon"), None);
        assert_eq!(parse("x"), None);
    }
}
