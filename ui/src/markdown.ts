// Model output as markdown: raw HTML in it is shown as text, never run;
// code blocks are highlighted and get a copy button.
import { Marked } from "marked";
import hljs from "highlight.js/lib/common";

const escape = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const marked = new Marked({
  gfm: true,
  breaks: true,
  renderer: {
    html({ text }) {
      return escape(text);
    },
  },
});

export function renderMarkdown(el: HTMLElement, text: string): void {
  el.innerHTML = marked.parse(text, { async: false }) as string;
  for (const a of el.querySelectorAll("a")) {
    a.target = "_blank";
    a.rel = "noopener noreferrer";
  }
  for (const code of el.querySelectorAll<HTMLElement>("pre > code")) {
    hljs.highlightElement(code);
    const pre = code.parentElement!;
    const copy = document.createElement("button");
    copy.className = "copy";
    copy.textContent = "Copy";
    copy.title = "Copy this code";
    copy.onclick = async () => {
      await navigator.clipboard.writeText(code.innerText);
      copy.textContent = "Copied";
      setTimeout(() => (copy.textContent = "Copy"), 1500);
    };
    pre.prepend(copy);
  }
}
