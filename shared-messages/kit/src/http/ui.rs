//! `GET /`: a read-only page for people that lists a service's workflows
//! with their status, step and progress, refreshing itself every 2 s from
//! the service's list route (and each open one's progress route); a click
//! on a row, or the page's `#<id>` fragment, shows that workflow's history
//! as a timeline. Everything is inline: no external assets, so it works
//! without internet. One page for both services, filled in by [`Page`].

/// What differs between the services' pages.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// The title and heading (the service's name).
    pub title: &'static str,
    /// Beside the heading, what the list shows.
    pub subtitle: &'static str,
    /// The six column headings.
    pub columns: [&'static str; 6],
    /// One workflow, with its article ("an order"), for the footer.
    pub one: &'static str,
    /// A JavaScript object: `list` (the list route), `key` (the list's
    /// field), `id` (the row id field), `noun`, and functions `progress(row)`
    /// and `history(id)` (routes), `step(row, progress)` and `extra(row)`
    /// (cell texts).
    pub config: &'static str,
}

impl Page {
    /// The page's HTML.
    pub fn html(&self) -> String {
        let head: String = self
            .columns
            .iter()
            .map(|c| format!("<th>{c}</th>"))
            .collect();
        include_str!("ui.html")
            .replace("__TITLE__", self.title)
            .replace("__SUBTITLE__", self.subtitle)
            .replace("__HEAD__", &head)
            .replace("__ONE__", self.one)
            .replace("__CONFIG__", self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled() {
        let html = Page {
            title: "t-service",
            subtitle: "things",
            columns: ["A", "B", "C", "D", "E", "F"],
            one: "a thing",
            config: "{}",
        }
        .html();
        assert!(!html.contains("__"), "{html}");
        assert!(html.contains("<th>A</th><th>B</th>"));
        assert!(html.contains("<title>t-service</title>"));
    }
}
