//! Where an order is in its lifecycle.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where an order is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    Pending,
    Confirmed,
    Shipped,
    Delivered,
    Cancelled,
}

impl Status {
    /// Delivered and cancelled orders never change again.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Delivered | Status::Cancelled)
    }

    /// The stable number used on the wire and in the database.
    pub fn code(self) -> i32 {
        match self {
            Status::Pending => 1,
            Status::Confirmed => 2,
            Status::Shipped => 3,
            Status::Delivered => 4,
            Status::Cancelled => 5,
        }
    }

    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            1 => Status::Pending,
            2 => Status::Confirmed,
            3 => Status::Shipped,
            4 => Status::Delivered,
            5 => Status::Cancelled,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Confirmed => "CONFIRMED",
            Status::Shipped => "SHIPPED",
            Status::Delivered => "DELIVERED",
            Status::Cancelled => "CANCELLED",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip() {
        for s in [
            Status::Pending,
            Status::Confirmed,
            Status::Shipped,
            Status::Delivered,
            Status::Cancelled,
        ] {
            assert_eq!(Status::from_code(s.code()), Some(s));
        }
        assert_eq!(Status::from_code(0), None);
        assert!(Status::Delivered.is_final() && Status::Cancelled.is_final());
        assert!(!Status::Shipped.is_final());
    }
}
