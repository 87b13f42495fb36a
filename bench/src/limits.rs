//! Raising the open-file limit, so that tens of thousands of sockets fit.
//!
//! Each connection is one file descriptor. Distributions often start processes with
//! a soft limit of 1024; the hard limit is usually far higher, and a process may raise
//! its soft limit up to it (root may raise the hard limit too, up to `fs.nr_open`).

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// The soft limit before and after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nofile {
    /// Soft limit found at start (`None`: unlimited).
    pub before: Option<u64>,
    /// Soft limit now.
    pub after: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to at least `want` if possible: up to the hard
/// limit, and beyond it when the process may raise the hard limit. Never lowers it.
pub fn raise_nofile(want: u64) -> Nofile {
    let current = getrlimit(Resource::Nofile);
    let before = current.current;
    if before.is_none_or(|soft| soft >= want) {
        return Nofile {
            before,
            after: before,
        };
    }
    // Past the hard limit first (root), else up to the hard limit.
    let raised_hard = current.maximum.is_some_and(|hard| hard < want)
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want),
                maximum: Some(want),
            },
        )
        .is_ok();
    if !raised_hard {
        let soft = current.maximum.map_or(want, |hard| hard.min(want));
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(soft),
                maximum: current.maximum,
            },
        );
    }
    Nofile {
        before,
        after: getrlimit(Resource::Nofile).current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_never_goes_down() {
        let start = getrlimit(Resource::Nofile).current;
        let n = raise_nofile(16);
        assert_eq!(n.before, start);
        assert_eq!(
            n.after, start,
            "asking for less than there is changes nothing"
        );
        let n = raise_nofile(start.unwrap_or(1024).saturating_add(1));
        assert!(n.after >= n.before);
    }
}
