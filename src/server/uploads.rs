//! The places for edits' bodies: [`MAX_UPLOADS`] in all, and at most
//! [`MAX_UPLOADS_PER_CLIENT`] for one client, so that a few clients
//! trickling bodies cannot lock everyone else out of edits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::api_error::ApiError;
use super::limits::{MAX_UPLOADS, MAX_UPLOADS_PER_CLIENT};

/// The upload places, shared by the handlers.
#[derive(Debug)]
pub(super) struct UploadPlaces {
    all: Arc<Semaphore>,
    /// Places held by each client; a client with none has no entry.
    held: Mutex<HashMap<IpAddr, usize>>,
}

impl Default for UploadPlaces {
    fn default() -> Self {
        Self {
            all: Arc::new(Semaphore::new(MAX_UPLOADS)),
            held: Mutex::default(),
        }
    }
}

/// One place, given back when dropped.
#[derive(Debug)]
pub(super) struct UploadPlace {
    _permit: OwnedSemaphorePermit,
    places: Arc<UploadPlaces>,
    client: Option<IpAddr>,
}

/// Who a client is, as far as an address tells: an IPv4 address, or an
/// IPv6 /64 (one machine usually has a whole /64 to pick from).
fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
        v4 => v4,
    }
}

impl UploadPlaces {
    /// A place for `peer`'s upload (no per-client cap without an address),
    /// or 429.
    pub(super) fn take(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<UploadPlace, ApiError> {
        let client = peer.map(client_of);
        let mut held = self.held.lock().expect("not poisoned");
        if let Some(ip) = client {
            if held.get(&ip).copied().unwrap_or(0) >= MAX_UPLOADS_PER_CLIENT {
                return Err(ApiError::client_uploads_full(MAX_UPLOADS_PER_CLIENT));
            }
        }
        let permit = self
            .all
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::uploads_full(MAX_UPLOADS))?;
        if let Some(ip) = client {
            *held.entry(ip).or_default() += 1;
        }
        Ok(UploadPlace {
            _permit: permit,
            places: self.clone(),
            client,
        })
    }
}

impl Drop for UploadPlace {
    fn drop(&mut self) {
        let Some(ip) = self.client else { return };
        let mut held = self.places.held.lock().expect("not poisoned");
        if let Some(count) = held.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                held.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_takes_at_most_its_share_and_gives_it_back() {
        let places = Arc::new(UploadPlaces::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let mine: Vec<_> = (0..MAX_UPLOADS_PER_CLIENT)
            .map(|_| places.take(Some(a)).unwrap())
            .collect();
        let e = places.take(Some(a)).unwrap_err();
        assert_eq!(e.status.as_u16(), 429);
        assert!(e.message.contains("this client"), "{}", e.message);
        // The same /64 is the same client; an IPv4-mapped address is its IPv4 one.
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let v6_other: IpAddr = "2001:db8::2".parse().unwrap();
        let _v6 = places.take(Some(v6)).unwrap();
        let _v6b = places.take(Some(v6_other)).unwrap();
        assert_eq!(client_of("::ffff:10.0.0.1".parse().unwrap()), a);
        assert!(
            places.take(Some(b)).is_err(),
            "all {MAX_UPLOADS} places taken"
        );
        drop(mine);
        assert!(places.held.lock().unwrap().get(&a).is_none());
        let _b = places.take(Some(b)).unwrap();
        let _a = places.take(Some(a)).unwrap();
    }
}
