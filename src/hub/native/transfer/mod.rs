//! Moving the bytes of one file: its missing byte ranges fetched in parallel
//! over the client's shared connections, each written where it belongs in a
//! resumable partial file, watched for stalls and reported as events.
//!
//! Each attempt ([`attempt`]) goes where the lookup's `HEAD` said the bytes
//! are (a retry asks the Hub again), with the token only when that is the
//! endpoint's own origin ([`range_request`]). A connection takes ranges of
//! the missing bytes one after another ([`schedule`]), and asks for the next
//! one before the current one ends, so the link does not idle while a
//! request waits out its latency; at a file's end, idle connections take
//! over the end of ranges still in flight, so that its last connections
//! finish together. Every write is recorded ([`ledger`]) and saved in the
//! partial file, so a retry or a new process asks only for what is missing;
//! [`progress`] turns it into events and feeds the stall watchdog. All
//! ranges of an attempt run inside its future: when one fails, the others
//! are dropped with it, so no connection outlives the attempt.

mod attempt;
mod ledger;
mod progress;
mod range_request;
mod schedule;

pub(crate) use self::attempt::{Transfer, Transferred};
