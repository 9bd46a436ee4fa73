//! Deliberately wrong behaviours that the simulator must catch (test-only).
//!
//! With the `planted-bugs` feature off (the default) every planted branch is a constant
//! `false` and compiles away. With it on, a test picks at most one bug per room through its
//! [`RoomConfig`](crate::room::RoomConfig), so tests running in parallel cannot affect each
//! other.

/// A bug the simulator's invariants are expected to catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum PlantedBug {
    /// Message timestamps are `now`, not `max(now, previous + 1)`.
    TimestampNotClamped,
    /// Restoring a room skips the first connection's attachment.
    RestoreForgetsAttachment,
    /// Trimming deletes one message more than the retained history.
    HistoryTrimOffByOne,
    /// Messages are broadcast when accepted, before their write is durable.
    BroadcastBeforeDurable,
    /// Restoring a room resets every session's rate-limit cooldown.
    LimiterResetOnRestore,
    /// A `since` resume replays from `since` itself, duplicating one message.
    SinceReplayDuplicate,
    /// A failed write tells none of its senders.
    FailedWriteSilent,
    /// A failed write tells its senders, then writes and broadcasts their messages anyway.
    FailedBatchLandsLater,
    /// After a failed write the next message takes the newest durable id, overwriting an
    /// acknowledged message.
    FailedWriteReusesDurableId,
    /// After a failed write the next message does not take the first id that failed, so
    /// ids have a gap.
    FailedWriteSkipsIds,
    /// A failed write is reported to its senders, but the room keeps waiting for it, so
    /// nothing is written (or answered) again.
    FailedWriteStalls,
    /// A connection whose token grants `read` may send messages.
    ReadRoleMaySend,
    /// A refresh is acknowledged, but the connection keeps its old token's expiry, so it is
    /// closed while its fresh token is valid.
    RefreshKeepsOldExpiry,
    /// A token holder joins under the name it asks for, not its token's.
    TokenNameIgnored,
    /// A deletion writes its change record but not the target's tombstone: storage keeps
    /// the deleted text (and a restore brings it back).
    DeleteKeepsStoredText,
    /// A restore forgets the room's bans.
    BanNotEnforcedAfterRestore,
    /// An edited message is rewritten with the edit's own (new) id, as if it moved.
    EditReordersId,
    /// A restore forgets the room's mutes.
    MuteNotEnforcedAfterRestore,
    /// A session's cooldown refuses its frames 1 s longer than the limiter's answer said
    /// (over-throttling, invisible to an upper bound on the limiter).
    CooldownOverrun,
    /// A `since` resume whose next message is the oldest retained one falls back to the
    /// newest messages (`recovered: false`) although everything after `since` is held.
    SinceEdgeFallsBack,
    /// A chat message is refused "Room is busy" whenever a write is in flight, far below
    /// the limit of messages waiting for storage.
    BusyWhileWriting,
    /// Idempotent sends are not deduplicated: a resend with a retained message's key is
    /// stored again as a new message.
    ResendStoredTwice,
    /// A durable IP ban closes none of the IP's open sockets.
    IpBanKeepsSockets,
    /// A durable unban deletes the stored ban, but the room keeps enforcing it until it is
    /// restored.
    UnbanNotApplied,
    /// A durable unmute deletes the stored mute, but the room keeps enforcing it until it
    /// is restored.
    UnmuteNotApplied,
    /// A restore forgets that the room is read-only.
    ReadOnlyNotEnforcedAfterRestore,
    /// A topic change is stored and shown to later joiners, but not broadcast.
    TopicNotBroadcast,
    /// A session's moderation frame is authorized whatever its token grants (anyone may
    /// delete, edit, kick, ban...).
    AnyoneMayModerate,
    /// A read-only room refuses its moderators' messages too.
    ModeratorNotExemptFromReadOnly,
    /// A join is let in after a restore whatever the room's `members_max`.
    MembersMaxNotEnforcedAfterRestore,
    /// The admin view lists bans that have expired (until lifted or the room forgets them).
    AdminViewListsExpiredBans,
    /// The admin view shows the room's settings without its topic.
    AdminViewDropsTopic,
    /// A restore forgets the room's `history_max`: it keeps the configured window again.
    HistoryMaxNotEnforcedAfterRestore,
    /// A restore forgets the room's `history_max_age_ms`: nothing ages out any more.
    HistoryAgeNotEnforcedAfterRestore,
}

impl PlantedBug {
    /// Every planted bug, for tests that go through all of them.
    pub const ALL: [PlantedBug; 34] = [
        PlantedBug::TimestampNotClamped,
        PlantedBug::RestoreForgetsAttachment,
        PlantedBug::HistoryTrimOffByOne,
        PlantedBug::BroadcastBeforeDurable,
        PlantedBug::LimiterResetOnRestore,
        PlantedBug::SinceReplayDuplicate,
        PlantedBug::FailedWriteSilent,
        PlantedBug::FailedBatchLandsLater,
        PlantedBug::FailedWriteReusesDurableId,
        PlantedBug::FailedWriteSkipsIds,
        PlantedBug::FailedWriteStalls,
        PlantedBug::ReadRoleMaySend,
        PlantedBug::RefreshKeepsOldExpiry,
        PlantedBug::TokenNameIgnored,
        PlantedBug::DeleteKeepsStoredText,
        PlantedBug::BanNotEnforcedAfterRestore,
        PlantedBug::EditReordersId,
        PlantedBug::MuteNotEnforcedAfterRestore,
        PlantedBug::CooldownOverrun,
        PlantedBug::SinceEdgeFallsBack,
        PlantedBug::BusyWhileWriting,
        PlantedBug::ResendStoredTwice,
        PlantedBug::IpBanKeepsSockets,
        PlantedBug::UnbanNotApplied,
        PlantedBug::UnmuteNotApplied,
        PlantedBug::ReadOnlyNotEnforcedAfterRestore,
        PlantedBug::TopicNotBroadcast,
        PlantedBug::AnyoneMayModerate,
        PlantedBug::ModeratorNotExemptFromReadOnly,
        PlantedBug::MembersMaxNotEnforcedAfterRestore,
        PlantedBug::AdminViewListsExpiredBans,
        PlantedBug::AdminViewDropsTopic,
        PlantedBug::HistoryMaxNotEnforcedAfterRestore,
        PlantedBug::HistoryAgeNotEnforcedAfterRestore,
    ];
}
