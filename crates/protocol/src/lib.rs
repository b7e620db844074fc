//! templar's protocol: the pure types and rules every node agrees on.
//!
//! No I/O and no tensors: keys and addresses ([`keys`]), the network name and protocol version
//! ([`network`]), block/window arithmetic and upload slots ([`clock`]), a validator's
//! per-window randomness ([`draw`]), sealed payloads ([`seal`]), the signed envelope every
//! published object travels in ([`envelope`]) and where objects live ([`layout`]).

pub mod clock;
pub mod draw;
pub mod envelope;
pub mod keys;
pub mod layout;
pub mod network;
pub mod seal;

pub use clock::{SlotCheck, UploadSlot, WindowClock};
pub use draw::{Draw, DrawError, Randomness};
pub use envelope::{EnvelopeError, Expected, Header, Kind};
pub use keys::{AccountId, KeyError, Keypair, Signature};
pub use network::{Network, PROTOCOL_VERSION};
