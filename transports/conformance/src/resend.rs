//! Idempotent sends (PROTOCOL.md, "Idempotent sends"): a chat frame with a `key` is stored
//! once per sender and key, however often it is sent, and a resend is answered with the
//! stored message.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::json;

use super::ws::{Client, Frame};
use super::{unique_name, Case, Target};

/// How long "nothing arrives" is watched for.
const SILENCE: Duration = Duration::from_millis(500);

/// Every idempotent-send case.
pub fn cases() -> Vec<Case> {
    vec![
        case!(resend_with_key_is_stored_once),
        case!(resend_keys_are_per_sender),
        case!(resend_bad_keys_are_refused),
        case!(resend_of_a_deleted_message_is_refused),
    ]
}

/// Sends `message` with `key` and waits for the chat frame that answers it.
async fn send_keyed(client: &mut Client, message: &str, key: &str) -> Result<Frame> {
    let name = client.name().map(str::to_owned);
    client
        .send_json(&json!({ "message": message, "key": key }))
        .await?;
    let what = format!("the answer to {message:?} with key {key:?}");
    let (_, frame) = client
        .until(&what, |f| {
            let own = f.is_chat() && f.str("name") == name.as_deref() && f.str("key") == Some(key);
            f.error().is_some() || own
        })
        .await?;
    ensure!(frame.error().is_none(), "{message:?} was refused: {frame}");
    Ok(frame)
}

/// The chat messages a newcomer's join replays.
async fn replayed(t: &Target, room: &str) -> Result<Vec<Frame>> {
    let (_reader, joined) = t.join(room, "reader").await?;
    Ok(joined.history())
}

async fn resend_with_key_is_stored_once(t: Target) -> Result<()> {
    let room = unique_name("resend");
    let (mut ann, _) = t.join(&room, "ann").await?;
    let (mut bob, _) = t.join(&room, "bob").await?;
    let stored = send_keyed(&mut ann, "only once", "k-1").await?;
    ensure!(
        stored.raw.ends_with(r#","key":"k-1"}"#) && stored.u64("id").is_some(),
        "the broadcast carries its id and key last: {stored}"
    );
    bob.until("ann's message", |f| f.str("key") == Some("k-1"))
        .await?;

    // The same frame again, on the same connection and on a new one (a client that
    // reconnected without knowing whether its frame was stored): each gets the stored
    // message back, nobody else sees anything.
    let again = send_keyed(&mut ann, "only once", "k-1").await?;
    ensure!(
        again.raw == stored.raw,
        "resend answered {again}, stored {stored}"
    );
    let (mut ann_again, _) = t.join(&room, "ann").await?;
    let answer = send_keyed(&mut ann_again, "only once", "k-1").await?;
    ensure!(
        answer.raw == stored.raw,
        "resend answered {answer}, stored {stored}"
    );
    bob.expect_no_chat(SILENCE, "a resent message is not broadcast again")
        .await?;
    if t.hibernate.is_some() {
        t.hibernate().await?;
        let after = send_keyed(&mut ann_again, "only once", "k-1").await?;
        ensure!(
            after.raw == stored.raw,
            "after hibernation: {after}, stored {stored}"
        );
    }
    let history = replayed(&t, &room).await?;
    ensure!(
        history.len() == 1 && history[0].raw == stored.raw,
        "stored once, got {history:?}"
    );
    Ok(())
}

async fn resend_keys_are_per_sender(t: Target) -> Result<()> {
    let room = unique_name("resend-per");
    let (mut ann, _) = t.join(&room, "ann").await?;
    let (mut bob, _) = t.join(&room, "bob").await?;
    let from_ann = send_keyed(&mut ann, "hello", "shared-key").await?;
    let from_bob = send_keyed(&mut bob, "hello", "shared-key").await?;
    ensure!(
        from_bob.str("name") == Some("bob") && from_bob.u64("id") > from_ann.u64("id"),
        "another sender's key is its own: ann {from_ann}, bob {from_bob}"
    );
    ensure!(replayed(&t, &room).await?.len() == 2, "two messages stored");
    Ok(())
}

async fn resend_bad_keys_are_refused(t: Target) -> Result<()> {
    let room = unique_name("resend-bad");
    let expected = r#"Malformed frame: "key" must be 1 to 64 letters, digits, '-' or '_'."#;
    let too_long = "k".repeat(65);
    // Two connections, so that neither spends its burst (each frame is one action).
    let (mut ann, _) = t.join(&room, "ann").await?;
    let (mut bea, _) = t.join(&room, "bea").await?;
    let cases = [
        (0, json!("")),
        (0, json!("a b")),
        (0, json!(7)),
        (1, json!(too_long)),
    ];
    for (which, key) in cases {
        let client = if which == 0 { &mut ann } else { &mut bea };
        client
            .send_json(&json!({ "message": "refused", "key": key }))
            .await?;
        let (_, frame) = client
            .until("the error", |f| f.error().is_some() || f.is_chat())
            .await?;
        ensure!(
            frame.error() == Some(expected),
            "key {key}: expected the error {expected:?}, got {frame}"
        );
    }
    // A null key is no key.
    bea.send_json(&json!({ "message": "accepted", "key": null }))
        .await?;
    let (_, frame) = bea
        .until("the echo", |f| f.error().is_some() || f.is_chat())
        .await
        .context("a null key")?;
    ensure!(
        frame.str("message") == Some("accepted") && frame.str("key").is_none(),
        "a null key: {frame}"
    );
    ensure!(
        replayed(&t, &room).await?.len() == 1,
        "only the accepted one is stored"
    );
    Ok(())
}

async fn resend_of_a_deleted_message_is_refused(t: Target) -> Result<()> {
    t.require_admin_token()?;
    let room = unique_name("resend-del");
    let (mut ann, _) = t.join(&room, "ann").await?;
    let stored = send_keyed(&mut ann, "regrettable", "k-del").await?;
    let id = stored.u64("id").context("an id")?;
    t.moderate(&room, json!({ "delete": id })).await?;
    ann.until("the deletion", |f| f.u64("deleted") == Some(id))
        .await?;

    // A client that never saw its echo resends from a new connection: the deletion stands.
    let (mut ann_again, _) = t.join(&room, "ann").await?;
    ann_again
        .send_json(&json!({ "message": "regrettable", "key": "k-del" }))
        .await?;
    let (_, frame) = ann_again
        .until("the answer", |f| f.error().is_some() || f.is_chat())
        .await?;
    let expected = "Message not sent again: a moderator deleted it.";
    ensure!(
        frame.error() == Some(expected),
        "expected the error {expected:?}, got {frame}"
    );
    ann.expect_no_chat(SILENCE, "a refused resend is not broadcast")
        .await?;
    ensure!(
        replayed(&t, &room).await?.is_empty(),
        "the deleted message stays deleted"
    );
    Ok(())
}
