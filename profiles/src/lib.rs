//! qtier-profiles: instance catalog, tier SLAs, projection and recommendation.
#![warn(missing_docs)]
#![deny(unsafe_code)]
