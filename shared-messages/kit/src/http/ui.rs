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
    /// The list route (`/orders`). Its answer names the list by the
    /// route's last segment (`orders`), which is also the page's noun; a
    /// workflow's routes are `<list>/<id>/progress` and `<list>/<id>/history`.
    pub list: &'static str,
    /// The row field shown as the id, and the id of the history route.
    pub id: &'static str,
    /// The row field that is the id of the progress route.
    pub progress_id: &'static str,
    /// A JavaScript object with the cell texts: functions `step(row,
    /// progress)` and `extra(row)`.
    pub cells: &'static str,
}

impl Page {
    /// The page's HTML, naming the replica that serves it (`REPLICA_ID`).
    pub fn html(&self, replica: &str) -> String {
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
            .replace("__REPLICA__", &escape(replica))
            .replace("__CONFIG__", &self.config())
    }

    /// The JavaScript object the page reads its routes and cells from.
    fn config(&self) -> String {
        let Self {
            list,
            id,
            progress_id,
            cells,
            ..
        } = self;
        let noun = list.rsplit('/').next().unwrap_or(list);
        format!(
            r#"{{
  list: "{list}?limit=100",
  key: "{noun}",
  id: "{id}",
  noun: "{noun}",
  progress: (row) => "{list}/" + encodeURIComponent(row.{progress_id}) + "/progress",
  history: (id) => "{list}/" + encodeURIComponent(id) + "/history",
  ...{cells},
}}"#
        )
    }
}

/// `text` as HTML text or attribute value.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
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
            list: "/things",
            id: "thingId",
            progress_id: "thingId",
            cells: "{ step: (t, p) => t.step, extra: (t) => \"\" }",
        }
        .html("pod-<1>");
        assert!(!html.contains("__"), "{html}");
        assert!(
            html.contains("replica pod-&lt;1&gt;"),
            "the replica, escaped"
        );
        assert!(html.contains(r#"list: "/things?limit=100","#));
        assert!(html.contains(r#"key: "things","#));
        assert!(html.contains(
            r#"progress: (row) => "/things/" + encodeURIComponent(row.thingId) + "/progress","#
        ));
        assert!(html.contains("<th>A</th><th>B</th>"));
        assert!(html.contains("<title>t-service</title>"));
    }
}
