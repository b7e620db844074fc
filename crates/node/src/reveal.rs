//! A miner's side of sealed payloads (see [`templar_protocol::seal`]): each window's message
//! goes up encrypted under a fresh key, and the key goes up once the upload slot has closed and
//! every gatherer has pinned what was uploaded.

use templar_chain::Chain;
use templar_protocol::seal::{self, PayloadKey};
use templar_protocol::{Kind, UploadSlot};

use crate::events::Part;
use crate::miner::Miner;
use crate::node::{WindowPeers, sleep_until_ms};

/// What a miner reveals after the slot.
pub(crate) enum Reveal {
    /// The key its own payload was sealed with.
    Own(PayloadKey),
    /// Another miner's key, for the sealed payload it took from it (the `early-copy` attack).
    CopiedFrom(u16),
}

impl<C: Chain> Miner<C> {
    /// The object to upload for `message`, and what to reveal once the slot has closed.
    pub(crate) fn seal(&mut self, window: u64, message: Vec<u8>) -> (Vec<u8>, Reveal) {
        if let Some(victim) = self.take_copied_seal() {
            return (message, Reveal::CopiedFrom(victim));
        }
        let key = PayloadKey::generate();
        let sealed = seal::seal(&key, &self.node.network, window, self.node.uid, &message);
        (sealed, Reveal::Own(key))
    }

    /// Publishes the key once the reveal delay after the slot has passed. A key that cannot be
    /// published costs this window's contribution, never the process.
    pub(crate) async fn reveal(
        &self,
        window: u64,
        reveal: Reveal,
        peers: &WindowPeers,
        slot: UploadSlot,
    ) {
        let due = slot.closes_ms + self.node.reveal_delay_ms();
        sleep_until_ms(due).await;
        let key = match reveal {
            Reveal::Own(key) => key,
            Reveal::CopiedFrom(victim) => {
                match self.node.revealed_key(window, victim, peers, due).await {
                    Some(key) => key,
                    None => return,
                }
            }
        };
        let node = &self.node;
        let published = node
            .store
            .publish(
                &node.hotkey,
                &node.network,
                Kind::PayloadKey,
                window,
                node.uid,
                key.as_bytes(),
            )
            .await;
        if let Err(error) = published {
            node.failed(Part::Storage, "revealing the payload key", &error);
        }
    }
}
