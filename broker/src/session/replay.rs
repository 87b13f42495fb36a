//! Replay planning for a `subscribe`: what each new pattern replays (`last`, or the
//! `resume` positions it matches) and which topics get `reset` at once. Pure, so
//! the rules of [docs/protocol.md, `subscribe`](../../../docs/protocol.md#subscribe)
//! and [Resume](../../../docs/protocol.md#resume) are unit-tested here.

use std::collections::BTreeMap;

use crate::protocol::{Replay, Resume};
use crate::topic::{self, Pattern, TopicError};

/// What a subscribe request replays.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Plan {
    /// One per new pattern, in order.
    pub(super) replays: Vec<Replay>,
    /// Topics whose resume position belongs to another epoch: `reset`
    /// (`epoch_changed`) at once.
    pub(super) resets: Vec<String>,
}

/// Plans the replays of `new` (the request's patterns this connection does not hold
/// yet) for `last` or `resume`, against this node's `epoch` and history size.
///
/// A resume position belongs to the first new pattern that matches its topic, so
/// overlapping patterns in one request answer it once (one replay or one `reset`,
/// never two); positions no new pattern matches are ignored. `last` is capped at
/// `history_size`. With both (only an event stream sends both: `subscribe` refuses
/// it), `last` applies to the patterns the resume names no topic of. A resume topic
/// that is not a valid topic name refuses the whole request.
pub(super) fn plan(
    new: &[Pattern],
    last: Option<u32>,
    resume: Option<Resume>,
    epoch: &str,
    history_size: usize,
) -> Result<Plan, TopicError> {
    let last = last.map(|n| Replay::Last(n.min(u32::try_from(history_size).unwrap_or(u32::MAX))));
    let otherwise = || last.clone().unwrap_or(Replay::None);
    let Some(resume) = resume else {
        return Ok(Plan {
            replays: vec![otherwise(); new.len()],
            resets: Vec::new(),
        });
    };
    for name in resume.topics.keys() {
        topic::validate_topic(name)?;
    }
    // A pattern that matches a resumed topic has delivered events, even where the
    // position went to an earlier pattern: `last` would duplicate them.
    let resumed: Vec<bool> = new
        .iter()
        .map(|p| resume.topics.keys().any(|t| p.matches(t)))
        .collect();
    let mut per_pattern = vec![BTreeMap::new(); new.len()];
    for (name, seq) in resume.topics {
        if let Some(i) = new.iter().position(|p| p.matches(&name)) {
            per_pattern[i].insert(name, seq);
        }
    }
    let same_epoch = resume.epoch == epoch;
    let mut resets = Vec::new();
    let replays = per_pattern
        .into_iter()
        .zip(resumed)
        .map(|(positions, resumed)| {
            if !resumed {
                otherwise()
            } else if same_epoch {
                Replay::Resume(positions)
            } else {
                resets.extend(positions.into_keys());
                Replay::None
            }
        })
        .collect();
    Ok(Plan { replays, resets })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(list: &[&str]) -> Vec<Pattern> {
        list.iter()
            .map(|p| Pattern::parse(p).expect("valid pattern"))
            .collect()
    }

    fn resume(epoch: &str, topics: &[(&str, u64)]) -> Option<Resume> {
        Some(Resume {
            epoch: epoch.into(),
            topics: topics.iter().map(|(t, s)| ((*t).to_owned(), *s)).collect(),
        })
    }

    fn positions(topics: &[(&str, u64)]) -> Replay {
        Replay::Resume(topics.iter().map(|(t, s)| ((*t).to_owned(), *s)).collect())
    }

    #[test]
    fn nothing_asked_replays_nothing() {
        let plan = plan(&patterns(&["a.*", "b"]), None, None, "e1", 100).expect("plan");
        assert_eq!(plan.replays, [Replay::None, Replay::None]);
        assert!(plan.resets.is_empty());
    }

    #[test]
    fn last_is_capped_at_the_history_size() {
        let p = plan(&patterns(&["a.*"]), Some(500), None, "e1", 100).expect("plan");
        assert_eq!(p.replays, [Replay::Last(100)]);
    }

    #[test]
    fn with_resume_last_replays_only_the_patterns_no_resumed_topic_matches() {
        let new = patterns(&["a.*", "b.*", "c.*", ">"]);
        let p = plan(&new, Some(3), resume("e1", &[("a.x", 1)]), "e1", 100).expect("plan");
        assert_eq!(
            p.replays,
            [
                positions(&[("a.x", 1)]),
                Replay::Last(3),
                Replay::Last(3),
                positions(&[]),
            ],
            "> delivered a.x too (through a.*): no history for it"
        );
        assert!(p.resets.is_empty());
        let p = plan(&new, Some(3), resume("old", &[("a.x", 1)]), "e1", 100).expect("plan");
        assert_eq!(
            p.replays,
            [Replay::None, Replay::Last(3), Replay::Last(3), Replay::None]
        );
        assert_eq!(p.resets, ["a.x"]);
    }

    #[test]
    fn each_position_goes_to_the_first_new_pattern_that_matches_it() {
        let new = patterns(&["a.*", "a.>", "b.x"]);
        let p = plan(
            &new,
            None,
            resume("e1", &[("a.x", 4), ("a.x.y", 7), ("b.x", 2), ("c.z", 9)]),
            "e1",
            100,
        )
        .expect("plan");
        assert_eq!(
            p.replays,
            [
                positions(&[("a.x", 4)]),
                positions(&[("a.x.y", 7)]),
                positions(&[("b.x", 2)]),
            ],
            "a.x once (through a.*), c.z ignored"
        );
        assert!(p.resets.is_empty());
    }

    #[test]
    fn another_epoch_resets_the_matched_topics_and_replays_nothing() {
        let new = patterns(&["a.*", "a.>"]);
        let p = plan(
            &new,
            None,
            resume("old", &[("a.x", 4), ("a.x.y", 7), ("c.z", 9)]),
            "e1",
            100,
        )
        .expect("plan");
        assert_eq!(p.replays, [Replay::None, Replay::None]);
        assert_eq!(
            p.resets,
            ["a.x", "a.x.y"],
            "once each; c.z is not asked for"
        );
    }

    #[test]
    fn an_invalid_resume_topic_refuses_the_request() {
        let new = patterns(&["a.*"]);
        for bad in ["a.*", "a..b", ""] {
            let err = plan(&new, None, resume("e1", &[(bad, 1)]), "e1", 100);
            assert!(err.is_err(), "{bad:?}");
        }
    }
}
