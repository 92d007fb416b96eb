"""Re-emit a narrative div keeping only plain formatting elements, every text escaped.

A stored document's narrative may come from another organisation's system. Before it is shown in a
browser it passes this allowlist (the FHIR narrative's basic formatting, https://hl7.org/fhir/R4/narrative.html):
other elements are dropped (the content of script, style and the like with them), attributes are
dropped except table spans, and text and attribute values are escaped again. Pure, standard library.
"""

from __future__ import annotations

from html import escape
from html.parser import HTMLParser

ALLOWED = frozenset({
    "div", "p", "br", "hr", "span", "b", "i", "em", "strong", "u", "small", "sub", "sup", "pre", "code",
    "table", "caption", "thead", "tbody", "tfoot", "tr", "th", "td", "ul", "ol", "li", "dl", "dt", "dd",
    "h1", "h2", "h3", "h4", "h5", "h6", "blockquote",
})
VOID = frozenset({"br", "hr"})
# Elements whose content is not text for a reader and must not survive even as text.
DROPPED_WITH_CONTENT = frozenset({"script", "style", "iframe", "object", "embed", "template", "noscript", "svg",
                                  "math", "head", "title", "textarea", "select"})
SPAN_ATTRIBUTES = frozenset({"colspan", "rowspan"})


class _Sanitiser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.open: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in DROPPED_WITH_CONTENT:
            self.skipping += 1
            return
        if self.skipping or tag not in ALLOWED:
            return
        kept = "".join(f' {name}="{escape(value)}"' for name, value in attrs
                       if name in SPAN_ATTRIBUTES and value and value.isdigit())
        if tag in VOID:
            self.out.append(f"<{tag}{kept}/>")
            return
        self.out.append(f"<{tag}{kept}>")
        self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID and not self.skipping:
            self.out.append(f"<{tag}/>")

    def handle_endtag(self, tag: str) -> None:
        if tag in DROPPED_WITH_CONTENT:
            self.skipping = max(0, self.skipping - 1)
            return
        if self.skipping or tag not in self.open:
            return
        while self.open:  # close anything left open inside it, so the output stays well formed
            last = self.open.pop()
            self.out.append(f"</{last}>")
            if last == tag:
                break

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.out.append(escape(data, quote=True))

    def result(self) -> str:
        return "".join(self.out) + "".join(f"</{tag}>" for tag in reversed(self.open))


def sanitise(markup: str) -> str:
    """`markup` with only allowed formatting elements left; safe to place inside an HTML page."""
    parser = _Sanitiser()
    parser.feed(markup)
    parser.close()
    return parser.result()
