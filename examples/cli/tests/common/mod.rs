//! What more than one test file of `kinesis` needs.

use std::collections::{BTreeSet, HashMap};

/// The IAM actions documented per subcommand in the README's `iam-actions` table.
pub fn documented_actions() -> HashMap<String, BTreeSet<String>> {
    let readme = include_str!("../../README.md");
    let table = readme.split_once("<!-- iam-actions -->").unwrap().1;
    table
        .lines()
        .skip(3)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let actions = cells[2]
                .split('`')
                .filter(|part| part.contains(':'))
                .map(str::to_owned)
                .collect();
            (cells[1].trim_matches('`').to_owned(), actions)
        })
        .collect()
}
