// FedKeys demo keyboard: where the page's sentences start and end. Pure functions of the text,
// kept apart from keyboard.js's state: Shift, learning finished sentences, text inserted between
// learned ones and the pieces of a long paste all read the same marks from here.
"use strict";

globalThis.FedKeysSentences = (() => {
  // Closing marks: "…" as "..."; a Chinese or Japanese 。！？ needs no space after it. Closing
  // quotes and brackets may follow a mark (a phone's smart punctuation, a paste); opening ones
  // may precede a sentence's first word.
  const END = ".!?…", CJK_END = "。！？";
  const CLOSE = "\"')\\]’”", CJK_CLOSE = CLOSE + "」』）", OPEN = "\"'(\\[{‘“";

  // Not after a title, "e.g." or an initial ("Mr. Smith", "e.g. this", "J. Smith"), where a full
  // stop ends no sentence: the text was cut there ("I met Mr." learned apart from "Smith ...")
  // and Shift came on. "I." is the pronoun ("so do I. Then"), not an initial.
  const ABBREVIATION = /(?:^|[\s"'(\[{“‘])(?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|Mt|vs|cf|e\.g|i\.e|(?!I)\p{Lu})\.$/u;

  // Auto-capitalisation: the first letter of the message and of every sentence after ". ", "! ",
  // "? ", also after an opening quote or bracket there ('"Hi', "'Hi", "(Hi"). A line's start is a
  // sentence's too (Shift+Enter's paragraph break), also after "Mr.".
  const LINE_START = new RegExp(`(?:^|\\n)\\s*[${OPEN}]*$`);
  const AFTER_END = new RegExp(`[${END}][${CLOSE}]*\\s+[${OPEN}]*$`);
  const sentenceStart = (before) => LINE_START.test(before)
    || (AFTER_END.test(before) && !ABBREVIATION.test(before.trimEnd()));

  // Whether text typed at the end of `before` begins a sentence, for learning (no abbreviation
  // test: text put between learned sentences).
  const STARTS_AFTER = new RegExp(`(?:^|[${END}${CJK_END}][${CJK_CLOSE}]*|\\n)\\s*$`);
  const startsAfter = (before) => STARTS_AFTER.test(before);

  // "'hello" -> "'Hello": a single quote typed before the word stays in front of it. A word
  // with its own capitals after a small first letter ("iPhone", "eBay") is typed as shown.
  const capitalise = (w) => {
    if (/^['‘’]?\p{Ll}+\p{Lu}/u.test(w)) return w;
    const i = /^['‘’]/.test(w) ? 1 : 0;
    return w.slice(0, i) + w.charAt(i).toUpperCase() + w.slice(i + 1);
  };

  // Where `text`'s sentences end: past a closing mark, its closing quotes and brackets and one
  // space, or at the text's end; not after "Mr." or "e.g.". The closing marks as `sentenceStart`
  // reads them: a typographic quote too, after which Shift came on but the sentence was not
  // learned. A line break ends one too, marked or not (a paragraph, a list's line): a text's
  // lines were learned as one run of words. So does "…", as "..." does, and a Chinese or
  // Japanese 。！？, which no space follows: where the next one starts (a text of them was learned
  // only at Send, as one).
  const ENDS = new RegExp(`[${END}]+[${CLOSE}]*(?:\\s|$)|[${CJK_END}]+[${CJK_CLOSE}]*\\s?|\\n`, "g");
  function sentenceEnds(text) {
    const ends = [], re = new RegExp(ENDS);
    let m;
    while ((m = re.exec(text)) !== null) {
      if (m[0].endsWith("\n") || !ABBREVIATION.test(text.slice(0, m.index + m[0].trimEnd().length))) {
        ends.push(m.index + m[0].length);
      }
    }
    return ends;
  }
  // `text`'s sentences, trimmed, cut where `sentenceEnds` says.
  function sentencesOf(text) {
    const out = [];
    let start = 0;
    for (const end of sentenceEnds(text)) {
      out.push(text.slice(start, end).trim());
      start = end;
    }
    out.push(text.slice(start).trim());
    return out.filter(Boolean);
  }
  // How much of `rest` is finished sentences (-1: none): up to the last end something follows.
  function finishedUpTo(rest) {
    const ends = sentenceEnds(rest).filter((end) => end < rest.length || /\s/.test(rest[end - 1]));
    return ends.length ? ends[ends.length - 1] : -1;
  }

  // A long paste is committed in pieces of whole sentences (a word at most cut where one
  // sentence alone is longer): as one commit, 100 KB would be refused whole (the device takes
  // 16,384 characters a commit) and nothing of it learned. Cut at any closing mark (no
  // abbreviation test: this only chooses where a piece may end).
  const PIECE = 8000;
  const MARKS = END + CJK_END;
  const PIECES = new RegExp(`[^${MARKS}]*[${MARKS}]+[${CJK_CLOSE}]*\\s*|[^${MARKS}]+$`, "g");
  function pieces(text) {
    const out = [];
    let cur = "";
    for (const s of text.match(PIECES) || [text]) {
      if (cur && cur.length + s.length > PIECE) { out.push(cur); cur = ""; }
      cur += s;
      while (cur.length > PIECE) {
        let at = cur.lastIndexOf(" ", PIECE);
        if (at <= 0) at = PIECE;
        if (/[\uD800-\uDBFF]/.test(cur[at - 1])) at--;   // not between an emoji's halves
        out.push(cur.slice(0, at));
        cur = cur.slice(at);
      }
    }
    if (cur.trim()) out.push(cur);
    return out;
  }

  return Object.freeze({ sentenceStart, startsAfter, capitalise, sentenceEnds, sentencesOf, finishedUpTo, pieces });
})();
