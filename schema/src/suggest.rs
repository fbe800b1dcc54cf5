//! "Did you mean": the known name closest to a mistyped one.

/// The candidate closest to `word`, when it is close enough to be a likely typo: at most one
/// edit (insertion, deletion, substitution or swap of two neighbours) per three characters of
/// the candidate, and at least one. Ties go to the first candidate. Exact matches are not
/// suggested (a name that exists needs no correction).
///
/// ```
/// use cplane_schema::suggest::closest;
/// assert_eq!(closest("regoin", ["region", "environment"]), Some("region"));
/// assert_eq!(closest("spark", ["trino", "superset"]), None);
/// ```
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        if candidate == word {
            continue;
        }
        let distance = strsim::osa_distance(word, candidate)
            .min(strsim::osa_distance(&word.to_lowercase(), &candidate.to_lowercase()) + 1);
        let limit = (candidate.chars().count() / 3).max(1);
        if distance <= limit && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// `; did you mean `x`?` when a candidate is close to `word`, else nothing; for appending to a
/// message.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(word, candidates)
        .map(|c| format!("; did you mean `{c}`?"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: [&str; 6] = [
        "region",
        "environment",
        "account",
        "aws",
        "deletionPolicy",
        "stacks",
    ];

    #[test]
    fn suggests_the_field_a_typo_was_meant_to_be() {
        assert_eq!(closest("regoin", FIELDS), Some("region"));
        assert_eq!(closest("enviroment", FIELDS), Some("environment"));
        assert_eq!(closest("deletionpolicy", FIELDS), Some("deletionPolicy"));
        assert_eq!(closest("stack", FIELDS), Some("stacks"));
        assert_eq!(
            closest("aws", FIELDS),
            None,
            "exact names need no suggestion"
        );
    }

    #[test]
    fn suggests_nothing_for_names_that_are_not_typos() {
        assert_eq!(closest("owner", FIELDS), None);
        assert_eq!(
            closest("spark", ["airflow", "bff", "superset", "trino"]),
            None
        );
        assert_eq!(closest("x", ["bff"]), None);
        assert_eq!(closest("anything", std::iter::empty()), None);
    }

    #[test]
    fn short_names_allow_one_edit_and_ties_go_to_the_first() {
        assert_eq!(closest("bf", ["bff"]), Some("bff"));
        assert_eq!(closest("tirno", ["trino", "trine"]), Some("trino"));
        assert_eq!(closest("sgp-2", ["fra-1", "sgp-1"]), Some("sgp-1"));
        assert_eq!(closest("sgp-1", ["sgp-2", "sgp-3"]), Some("sgp-2"));
    }

    #[test]
    fn did_you_mean_formats_a_suffix_or_nothing() {
        assert_eq!(did_you_mean("tirno", ["trino"]), "; did you mean `trino`?");
        assert_eq!(did_you_mean("spark", ["trino"]), "");
    }
}
