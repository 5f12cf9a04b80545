// FedKeys demo keyboard: suggestions on every keystroke, finished sentences committed to the
// device's text cache. The private field's text never leaves this page.
"use strict";

(function () {
  const $ = (sel) => document.querySelector(sel);
  const message = $("#message");
  const privateField = $("#private-field");
  const strip = $("#strip");
  const slots = {
    middle: strip.querySelector('[data-slot="middle"]'),
    left: strip.querySelector('[data-slot="left"]'),
    right: strip.querySelector('[data-slot="right"]'),
  };
  const newId = () => (window.crypto && crypto.randomUUID) ? crypto.randomUUID()
    : String(Date.now()) + Math.random().toString(16).slice(2);
  const clientId = newId();

  let active = message;          // the field the on-screen keyboard types into
  let shift = false;
  let committedPrefix = "";      // the part of the message already committed to the cache
  let clearArmed = null;         // timer while "clear my history" waits for its confirming tap

  // Where sentences start and end (sentences.js, loaded first).
  const { sentenceStart, startsAfter, capitalise, sentencesOf, finishedUpTo, pieces } = globalThis.FedKeysSentences;

  const isPrivate = (field) => field.type === "password" || field.hasAttribute("data-private");

  // --- API -----------------------------------------------------------------------------------

  // The session token comes in the URL's fragment (never sent to any server); keep it for reloads.
  const hashToken = new URLSearchParams(location.hash.slice(1)).get("token");
  if (hashToken) { sessionStorage.setItem("fedkeys-token", hashToken); history.replaceState(null, "", location.pathname); }
  const token = sessionStorage.getItem("fedkeys-token") || "";

  async function api(path, body, timeoutMs) {
    if (body !== undefined && path !== "/api/suggest") epoch++;
    // Text is sent well-formed: half an emoji (a lone surrogate) was refused as "not valid
    // Unicode", which emptied the strip and lost the sentence's save for good.
    const wellFormed = (k, v) => (typeof v === "string" && v.toWellFormed ? v.toWellFormed() : v);
    const opts = body === undefined ? {} : {
      method: "POST", headers: { "Content-Type": "application/json", "X-Keyboard-Token": token },
      body: JSON.stringify(body, wellFormed),
    };
    const ctl = timeoutMs ? new AbortController() : null;   // an answer that never comes is an error
    const timer = ctl && setTimeout(() => ctl.abort(), timeoutMs);
    let resp, data;
    try {
      resp = await fetch(path, ctl ? { ...opts, signal: ctl.signal } : opts);
      // the body inside the timeout too: one that never finished left a poll (or a strip) waiting for good
      data = await resp.json().catch((err) => { if (err.name === "AbortError") throw err; return {}; });
    } catch (err) {   // the browser's "Failed to fetch" said nothing a user can act on
      throw Object.assign(new Error(err.name === "AbortError" ? "the keyboard service did not answer"
        : "the keyboard service cannot be reached (is it running?)"), { away: true, aborted: err.name === "AbortError" });
    } finally {
      clearTimeout(timer);
    }
    if (!resp.ok) throw Object.assign(new Error(data.message || ("HTTP " + resp.status)), { status: resp.status, code: data.error });
    return data;
  }

  let reportedPaused = null;   // whether learning is paused, as the device last said
  function renderStatus(st) {
    if (!st || !st.model) return;
    const chip = $("#model-chip");
    const version = st.model.version_id;
    $("#model-version").textContent = version || "no model yet";
    // "unknown" only until the device loop's first check-in says stable or canary.
    $("#model-channel").textContent = st.model.channel === "unknown" ? "not checked in" : st.model.channel;
    chip.dataset.channel = st.model.channel;
    chip.title = version ? `Suggestions from model version ${version} (${st.model.channel})` : "No model version yet";
    const n = st.cache.sentences;
    $("#cached-count").textContent = String(n);
    $("#cached-label").textContent = n === 1 ? "sentence" : "sentences";
    const toggle = $("#pause-toggle");
    toggle.checked = reportedPaused = !!st.paused;
    document.body.classList.toggle("paused", !!st.paused);
    $(".toggle-label").textContent = st.paused ? "Learning paused" : "Pause learning";
  }

  // A poll answered after a change (pause, commit, clear) may describe the state before it:
  // every change bumps `epoch`, and a poll that saw the epoch move is dropped.
  let epoch = 0;
  // A service that stopped answering (hung, or its machine suspended) left the last strip on
  // show, dimmed, with nothing said: status polls and strips wait this long, then the strip says
  // so, and a later answer brings it back. Long enough for a slow board's first strip of a long text.
  const ANSWER_TIMEOUT_MS = 10000;
  let polling = false;       // one status poll at a time: hung ones piled up in the browser's connections
  async function refreshStatus() {
    if (polling) return;
    polling = true;
    const mine = epoch;
    try {
      const st = await api("/api/status", undefined, ANSWER_TIMEOUT_MS);
      setOffline(false);
      cacheTrouble = "";
      if (mine === epoch) renderStatus(st);
      if (unsaved.length) retryUnsaved();
    } catch (e) {
      // the service runs; its text cache cannot be read (damaged, gone). Not a service stopping,
      // which closed it under the call: that is a service gone, as the next poll will find.
      if (e.status === 503 && e.code !== "stopping") {
        setOffline(false);
        if (e.message !== cacheTrouble) toast("Saved text cannot be read: " + e.message);
        cacheTrouble = e.message;
        $("#cached-count").textContent = "?";   // until it reads again, or Clear my history deletes it
        $("#cached-label").textContent = "sentences (unreadable: Clear my history deletes them)";
      } else {
        setOffline(true, e.aborted);      // the next poll retries
      }
    } finally {
      polling = false;
    }
  }
  let cacheTrouble = "";     // said once per message, not on every poll

  // When the device's process is gone, or does not answer, say so in the strip instead of emptying
  // it silently (or leaving the last one on show).
  let offline = false, offlineText = "";
  function setOffline(on, hung = false) {
    const text = hung ? "Keyboard service not answering: no suggestions" : "Keyboard service not running: no suggestions";
    if (on === offline && (!on || text === offlineText)) return;
    offline = on;
    document.body.classList.toggle("offline", on);
    if (on) {
      offlineText = text;
      stripSays("offline", text);
    } else if (active === message) {
      suggest();
    }
  }

  // Opened without the printed link's #token (or with a key since replaced): every call is refused,
  // so the strip says so at once, not "Could not save" at the end of a sentence.
  function noToken() {
    stripSays("no-token", "Open the link the device printed: it carries this page's key");
  }

  // A strip without suggestions that says why, in its middle slot; `state` is what tests wait on.
  function stripSays(state, text) {
    for (const s of Object.values(slots)) {
      s.textContent = ""; s.disabled = true; s.dataset.word = ""; s.style.fontSize = ""; s.classList.remove("wrap");
    }
    slots.middle.textContent = text;
    // said to a screen reader too: it heard the last suggestions, and then nothing
    if (text !== announced) { announced = text; $("#strip-said").textContent = text; }
    strip.dataset.state = state;
    delete strip.dataset.for;
  }

  let toastTimer = null, heldToast = null;
  // `undo`, if given, is a function the toast offers as an Undo button, shown longer (5 s).
  // A toast without one waits while one with an Undo shows, and comes after it: a sentence ended
  // within the 5 s ("Learned on this device") took the Undo of a word removed by mistake away.
  function toast(text, undo) {
    const t = $("#toast");
    if (!undo && t.classList.contains("actionable")) { heldToast = text; return; }
    // An Undo replaced by the next one's (a second word removed, answered late) took the focus
    // away with it, to the page's body: it goes back to the message, as when the toast ends.
    const hadFocus = !!t.querySelector(".toast-undo") && t.contains(document.activeElement);
    t.textContent = text;
    if (hadFocus) message.focus();
    t.classList.toggle("actionable", !!undo);
    if (undo) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "toast-undo";
      b.textContent = "Undo";
      b.addEventListener("mousedown", (e) => e.preventDefault());   // the caret stays in the text
      b.addEventListener("click", () => { endToast(); undo(); }, { once: true });
      t.append(" ", b);
    }
    t.classList.add("show");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(endToast, undo ? 5000 : 1800);
  }
  // Faded, its Undo goes too: out of sight, Tab still reached it (and Enter took a removal back).
  // Focus on it goes back to the message, whose strip it is about (it went to the page's body:
  // typed keys went nowhere, and Tab started again at the top). Then the toast that waited, if any.
  function endToast() {
    const t = $("#toast"), b = t.querySelector(".toast-undo");
    clearTimeout(toastTimer);
    t.classList.remove("show", "actionable");
    if (b && document.activeElement === b) message.focus();
    b?.remove();
    const next = heldToast;
    heldToast = null;
    if (next !== null) toast(next);
  }

  // --- suggestions ----------------------------------------------------------------------------

  let inFlight = false, again = false, seq = 0, shownSeq = 0;
  let askedFor = null;       // the text before the cursor the strip in flight is for
  let pendingTap = null;     // a tap on a strip for another text: waits for this one's (`accept`)

  function textBeforeCursor() {
    return message.value.slice(0, message.selectionStart);
  }

  let announced = "";
  function renderSuggestions(words, forText) {
    // Best-first from the server; the best goes in the middle, like a phone keyboard.
    const [best, second, third] = words;
    for (const [slot, word] of [["middle", best], ["left", second], ["right", third]]) {
      slots[slot].textContent = word || "";
      slots[slot].disabled = !word;
      slots[slot].dataset.word = word || "";
      // A narrow screen cut "unfortunately" and "unfortunate" to the same "unfortuna…".
      slots[slot].classList.toggle("long", !!word && word.length > 10);
      slots[slot].classList.toggle("longer", !!word && word.length > 14);
      fit(slots[slot]);
    }
    // For a screen reader, what the strip offers, best first, said when it changes.
    const said = words.length ? "Suggestions: " + words.slice(0, 3).join(", ") : "";
    if (said !== announced) { announced = said; $("#strip-said").textContent = said; }
    strip.dataset.state = words.length ? "ready" : "empty";
    strip.dataset.for = forText === undefined ? "" : forText;   // what they were computed for (tests wait on it)
  }

  // A word still too wide for its slot is shown whole in smaller type (down to 10 px), not cut:
  // at 320 px the best slot cut words of ten letters ("governme…"), and which word a tap would
  // type could not be read. Again when the window's width changes.
  // One too wide for a line even so ("internationalization" at 320 px, cut to "internationaliz…")
  // goes over two lines, whole, in type as large as fits the strip's height.
  function fit(el) {
    el.style.fontSize = "";
    el.classList.remove("wrap");
    if (!el.textContent || !el.clientWidth) return;
    let px = parseFloat(getComputedStyle(el).fontSize);
    while (el.scrollWidth > el.clientWidth && px > 10) el.style.fontSize = --px + "px";
    if (el.scrollWidth <= el.clientWidth) return;
    el.classList.add("wrap");
    el.style.fontSize = "";
    px = parseFloat(getComputedStyle(el).fontSize);
    while ((el.scrollHeight > el.clientHeight || el.scrollWidth > el.clientWidth) && px > 8) el.style.fontSize = --px + "px";
  }
  window.addEventListener("resize", () => { if (strip.dataset.state === "ready") Object.values(slots).forEach(fit); });

  // A strip needs only the text's recent part. Past 2 * TAIL characters the page sends what
  // follows a whitespace after a cut that moves in steps of TAIL, so the device refeeds the
  // context once a step, not on every keystroke, and the request stays under its limit
  // (`MAX_TEXT` in edge_runtime/keyboard_app.py: a longer one was refused, and the strip went empty).
  const TAIL = 4096;
  function recentPart(text) {
    if (text.length <= 2 * TAIL) return text;
    const cut = (Math.floor(text.length / TAIL) - 1) * TAIL;
    const ws = text.slice(cut).search(/\s/);
    if (ws >= 0) return text.slice(cut + ws + 1);
    // No whitespace to cut after (Chinese, Japanese): at the same step, or the part sent would
    // start one character later on every keystroke, and the device would feed all of it again each time
    // (141 ms a keystroke). Never between the two halves of an emoji (a lone half is not text:
    // the device would refuse the request, and every other strip go empty).
    return text.slice(/[\uDC00-\uDFFF]/.test(text[cut]) ? cut - 1 : cut);
  }

  async function suggest() {
    if (active !== message) return;
    // The strip on show was computed before this keystroke: it no longer claims to be for the
    // text (a keystroke and a backspace bring the same text back before its new answer).
    delete strip.dataset.for;
    if (inFlight) { again = true; return; }     // keep only the newest keystroke waiting
    inFlight = true;
    const mine = ++seq;
    try {
      const text = textBeforeCursor();
      askedFor = text;
      const res = await api("/api/suggest", { client: clientId, text: recentPart(text) }, ANSWER_TIMEOUT_MS);
      setOffline(false);
      // Focus may have moved to the private field meanwhile: a late answer must not replace its strip.
      // Nor is an answer shown for a text the cursor has left while a newer keystroke waits: its
      // strip comes next, and this one (the cursor stepped from "hel" to "he" and back) would
      // flash the words of a prefix no longer there.
      const stale = again && textBeforeCursor() !== text;
      if (mine > shownSeq && active === message && !stale && !res.superseded) {
        shownSeq = mine;
        renderSuggestions(res.suggestions || [], text);
        takePendingTap(text, res.suggestions || []);
      }
    } catch (e) {
      pendingTap = null;
      if (e.away || e.code === "stopping") setOffline(true, e.aborted);   // nobody listening, no answer, or leaving
      else if (e.status === 403 && active === message) noToken();
      // An error of the service's own (a 500) emptied the strip with nothing said: said, as an
      // error, until a keystroke's strip comes back.
      else if (e.status >= 500 && active === message) stripSays("failed", "No suggestions: the keyboard service failed (see its log)");
      else if (active === message) renderSuggestions([]);
    } finally {
      inFlight = false;
      if (again) { again = false; suggest(); }
    }
  }

  function privateStrip() {
    stripSays("private", "Private field: no suggestions, nothing learned");
  }

  // The word being typed at the end of the chunk before the cursor: what the device completed
  // ('"hel' completes "hel", after the quote), as `protocol.text.word_being_typed` splits it.
  // (‘ and ’ are apostrophes there, as the device reads them: `protocol.text._QUOTES`; a
  // combining mark or a zero-width joiner is part of its word, an emoji's variation selector is
  // not: `protocol.text.WORD_CLASS`; nor does a soft hyphen or a word joiner end it: `_TYPED`.)
  const WORD_CHAR = "(?:(?![\\uFE00-\\uFE0F])[\\p{L}\\p{N}\\p{Mn}\\p{Mc}_'‘’\\u200c\\u200d\\u00ad\\u2060\\ufeff])";
  const WORD_TAIL = new RegExp(WORD_CHAR + "*$", "u"), WORD_HEAD = new RegExp("^" + WORD_CHAR + "*", "u");
  const OPENING = /^["(\[{“]*$/, CLOSING = /[.,!?;:"')\]}”’]/;

  function applySuggestion(word) {
    if (!word) return;
    const pos = message.selectionStart;
    const before = message.value.slice(0, pos);
    const chunk = before.match(/\S*$/)[0];
    const partial = chunk.match(WORD_TAIL)[0];    // the part the suggestion replaces
    const lead = chunk.slice(0, chunk.length - partial.length);
    if (isPronoun(word) || (OPENING.test(lead) && sentenceStart(before.slice(0, before.length - chunk.length)))) {
      word = capitalise(word);
    }
    // The whole word goes, also the part after a cursor inside it ("hel|o" -> "help", not "help o");
    // no second space where one follows already, and none before a closing mark ('"help"').
    // A caret at a word's start ("when you |get home") puts the word in front of it: the rest of
    // that word was replaced only from inside it, and a tap there deleted "get".
    const start = pos - partial.length;
    const inside = partial.length > 0 && message.selectionStart === message.selectionEnd;
    const end = message.selectionEnd + (inside ? message.value.slice(message.selectionEnd).match(WORD_HEAD)[0].length : 0);
    const next = message.value[end];
    const space = next === " " || (next !== undefined && CLOSING.test(next)) ? "" : " ";
    replaceUndoably(message, word + space, start, end);
    const after = start + word.length + (space || next === " " ? 1 : 0);   // past the word's space, new or already there
    message.setSelectionRange(after, after);
    autoSpace = { value: message.value, at: message.selectionStart };
    message.focus();
    afterEdit(message);
  }

  // `field`'s text [start, end) replaced by `str` as typing does, so Ctrl+Z takes a tapped word
  // back (setRangeText is not on the browser's undo stack); setRangeText where that is refused.
  // Its "input" event is not an edit of the user's: the caller finishes the edit (afterEdit) once.
  let replacing = false;
  function replaceUndoably(field, str, start, end) {
    field.focus();
    if (start !== end && field.selectionStart === field.selectionEnd) {
      undone.push({ field, start, end, value: field.value, caret: field.selectionStart });
      if (undone.length > 20) undone.shift();
    }
    field.setSelectionRange(start, end);
    const before = field.value;
    let done = false;
    replacing = true;
    try { done = document.execCommand("insertText", false, str); } catch (e) { done = false; } finally { replacing = false; }
    // a deletion ("") is checked by the text changing: the slice test below always passes for it
    const missed = str === "" ? field.value === before : field.value.slice(start, start + str.length) !== str;
    if (!done || missed) field.setRangeText(str, start, end, "end");
  }

  // The browser's undo gives back the range it replaced selected, as it was for the replacement:
  // where the user had a caret (a tapped word's typed letters, a character the page's ⌫ took),
  // the next key then erased it ("see you tomor", tap, Ctrl+Z, "r" gave "see you r"). After such
  // an undo the caret goes back where it was (inside a word a tap replaced whole: "tomor|ow", not
  // its end).
  const undone = [];
  function caretAfterUndo(field) {
    const i = undone.findIndex((u) => u.field === field && u.value === field.value
      && u.start === field.selectionStart && u.end === field.selectionEnd);
    if (i < 0) return;
    field.setSelectionRange(undone[i].caret, undone[i].caret);
    undone.splice(i, 1);
  }
  for (const f of [message, privateField]) {
    f.addEventListener("input", (e) => { if (e.inputType === "historyUndo") caretAfterUndo(f); });
  }

  // A tapped suggestion brings its own space; punctuation typed right after it goes before that
  // space ("word. ", not "word ."), as on a phone keyboard, and a space typed then is that space
  // (it made two).
  let autoSpace = null;
  // A closing bracket too: "(see you tomorrow) ", not "(see you tomorrow )". Not a quote, which
  // may as well open the next word.
  const PUNCT = /^[.,!?;:)\]}…]$/;
  function punctuate(field, str) {
    const a = autoSpace;
    autoSpace = null;
    if (field !== message || !(PUNCT.test(str) || str === " ") || !a || a.value !== field.value
        || field.selectionStart !== a.at || field.selectionEnd !== a.at || field.value[a.at - 1] !== " ") {
      return false;
    }
    if (str !== " ") {
      replaceUndoably(field, str + " ", a.at - 1, a.at);
      // Still the tapped word's space, now after the mark: a space typed next is that space too
      // ("word.  Next" had two), and a second mark goes before it ("word... ", "(word.) ").
      autoSpace = { value: field.value, at: field.selectionStart };
    }
    afterEdit(field);
    return true;
  }

  // The pronoun typed in lower case ("i", "i'm", "i'll", "i've", "i'd") is written "I" when the
  // space or mark after it is typed, as phone keyboards do (Ctrl+Z takes it back), and a tapped
  // "i'm" goes in as "I'm". Only the text typed: the device's word list holds these in lower case
  // too (chat text), and offering "I" for "i" in the strip cost 0.04 to 0.08 KSR on every corpus.
  const PRONOUN = /(?:^|[\s"(\[{“‘])(i(?:['’](?:m|ll|ve|d))?)$/u;
  // The pronoun's lower-case form that ends `text` ("i'm" for "so i'm"), or null.
  const pronounAtEnd = (text) => text.slice(-8).match(PRONOUN)?.[1] ?? null;   // no form is longer than 4
  const isPronoun = (w) => pronounAtEnd(w) === w;
  // A ⌫ right after the correction takes it back, as on a phone ("i" in Swedish is "in"), and the
  // same "i" is then left as typed.
  let corrected = null, declined = null;
  function pronoun(field, str) {
    // not before a "." ("i.e.")
    if (field !== message || !(str === " " || (PUNCT.test(str) && str !== ".")) || field.selectionStart !== field.selectionEnd) {
      return false;
    }
    const pos = field.selectionStart;
    if (declined && declined.value === field.value && declined.at === pos) return false;
    const typed = pronounAtEnd(field.value.slice(Math.max(0, pos - 8), pos));
    if (!typed) return false;
    const start = pos - typed.length;
    replaceUndoably(field, capitalise(typed) + str, start, pos);
    corrected = { value: field.value, at: field.selectionStart, start, typed };
    afterEdit(field);
    return true;
  }
  function uncorrect(field) {
    const c = corrected;
    corrected = null;
    if (field !== message || !c || c.value !== field.value || field.selectionStart !== c.at
        || field.selectionEnd !== c.at) return false;
    replaceUndoably(field, c.typed, c.start, c.at);
    declined = { value: field.value, at: field.selectionStart };
    afterEdit(field);
    return true;
  }

  function autoShift() {
    if (active !== message) return;
    const before = textBeforeCursor();
    setShift(sentenceStart(before));
  }

  // --- committing -----------------------------------------------------------------------------

  function commonPrefix(a, b) {
    let i = 0;
    while (i < a.length && i < b.length && a[i] === b[i]) i++;
    return a.slice(0, i);
  }

  // Commits go to the device one at a time, in order, and so does a clear of the history. Text
  // whose commit the device did not answer (unreachable, failing on its side, or no answer in
  // COMMIT_TIMEOUT_MS) is kept in this page and sent again, first, after the next status poll
  // that is answered: a sentence is not lost while the device is busy or briefly failing. Each
  // commit carries an id, so one the device stored before its answer failed is not stored
  // twice (within one device process: a restart forgets the ids, so a commit stored just before
  // a kill and sent again is stored twice). Text the device refused is not kept (a page whose key
  // the device no longer takes: the toast says so). The key survives a restart of the device
  // process (`keyboard_token` in its data directory), so text queued meanwhile is sent. A clear
  // forgets what is queued or waiting its turn (`generation`). Only this page's memory holds it.
  const COMMIT_TIMEOUT_MS = 15000;
  let unsaved = [], saving = Promise.resolve(), generation = 0;
  const serially = (work) => { saving = saving.then(work, work); };
  // Leaving the page (a reload, a closed tab) loses that text: the browser asks first while
  // some is not saved yet (waiting its turn, unanswered, or kept to send again).
  let waiting = 0;
  window.addEventListener("beforeunload", (e) => {
    if (waiting || unsaved.length) { e.preventDefault(); e.returnValue = true; }   // returnValue: older browsers
  });

  function retryUnsaved() {
    serially(async () => {
      while (unsaved.length) {
        const item = unsaved[0];
        if (!await save(item)) break;
        if (unsaved[0] === item) unsaved.shift();   // else a clear emptied the queue meanwhile
      }
    });
  }

  function commit(field, text) {
    if (isPrivate(field)) return;                 // private text is never sent to the cache
    text = text.trim();
    // Nothing of a word in it: the device refuses it ("no words in it"), and that toast, after a
    // learned sentence's "." was retyped as "?", said the sentence was not learned.
    if (!/[\p{L}\p{N}]/u.test(text)) return;
    const item = { field, text, id: newId(), generation };
    waiting++;
    serially(async () => {
      try {
        if (item.generation !== generation) return;                    // cleared while it waited its turn
        if (unsaved.length || !await save(item)) {
          if (item.generation === generation) unsaved.push(item);       // behind the older ones
        }
      } finally {
        waiting--;
      }
    });
  }

  // One commit; false when the device did not answer it (the text is to be sent again).
  async function save({ field, text, id }) {
    try {
      const pending = api("/api/commit", { text, field_kind: field.dataset.fieldKind || "message", private: false,
                                          client: clientId, commit_id: id }, COMMIT_TIMEOUT_MS);
      const mine = epoch;                          // api() bumped it; a later change moves it again
      const res = await pending;
      // An answer that arrives after another change (a pause, a clear) must not overwrite its count.
      if (mine === epoch) renderStatus(res);
      toast(res.cached ? "Learned on this device" : "Not learned: " + (res.reason || "refused"));
      return true;
    } catch (e) {
      const away = e.away || e.status >= 500;
      toast((away ? "Not saved yet, sent again when the device answers: " : "Could not save: ") + e.message);
      return !away;
    }
  }

  // A sentence is finished when . ! ? or … is followed by a space, 。！？ by anything, or at a line break.
  // An edit inside text already learned (a word fixed in a finished sentence) keeps that text
  // learned: the boundary moves with what survives of it, so the sentence is not learned again,
  // one fragment per keystroke. Text that replaces all of it (select all, type) is new text.
  let lastText = "";              // the message as the last check saw it: where an edit happened
  function alignCommitted(text) {
    if (!text.startsWith(committedPrefix)) {
      const p = commonPrefix(lastText, text).length;
      let s = 0;                  // common suffix, not overlapping the common prefix
      while (s < Math.min(lastText.length, text.length) - p
             && lastText[lastText.length - 1 - s] === text[text.length - 1 - s]) s++;
      const oldEnd = lastText.length - s, b = committedPrefix.length;
      const boundary = b > oldEnd ? text.length - s + (b - oldEnd) : Math.min(p, b);
      committedPrefix = text.slice(0, Math.min(boundary, text.length));
      fresh = freshAfterEdit(fresh, p, oldEnd, text.length - s, b, text);
    }
    // The boundary goes back with an undo, and the redo that brings the same text back is not new
    // text: a sentence whose tapped words were undone and redone was learned again from its first
    // undone word ("morning more." after "good morning more."). Text that starts with what was
    // learned of this message is learned as far as that.
    for (const p of learnedPrefixes) {
      if (p.length > committedPrefix.length && text.startsWith(p)) committedPrefix = p;
    }
    lastText = text;
  }
  // A sentence typed between learned ones (the caret taken back to where one starts) is new text
  // inside the learned part, where it was kept learned with the rest and never learned, sent or
  // not: `fresh` is its span [start, end) of the message, learned as its sentences end. (Words
  // left unfinished there, "And " put before a learned "Then lunch.", are an edit of what follows.)
  let fresh = null;
  // `fresh` after the edit that made lastText[p, oldEnd) text[p, newEnd), before the learned part's
  // end `b`: moved with it, grown or cut by an edit touching it, or begun by text inserted where a
  // sentence starts: one span at a time, the last begun (an older one left unfinished is an edit).
  function freshAfterEdit(f, p, oldEnd, newEnd, b, text) {
    const delta = newEnd - oldEnd;
    if (f && p <= f.end && oldEnd >= f.start) {   // touching it
      const g = { start: Math.min(f.start, p), end: Math.max(f.end + delta, newEnd) };
      return g.start < g.end ? g : null;
    }
    if (oldEnd === p && newEnd > p && p < b && startsAfter(text.slice(0, p))) return { start: p, end: newEnd };
    if (f && oldEnd < f.start) return { start: f.start + delta, end: f.end + delta };
    return f;
  }
  let learnedPrefixes = [];       // committedPrefix after each commit of this message (the last 20)
  function learnedUpTo(prefix) {
    committedPrefix = prefix;
    learnedPrefixes.push(prefix);
    if (learnedPrefixes.length > 20) learnedPrefixes.shift();
  }

  // Where new text starts: the boundary, or the start of the word it cuts. A learned sentence
  // whose last word was fixed ("going home." to "going out.", backspacing into the word) learned
  // "ing out.", and "ing" was then suggested: the word is learned whole.
  const LETTER = new RegExp("^" + WORD_CHAR + "$", "u");   // one character of a word, as the device reads it
  function newTextStart(text) {
    let from = committedPrefix.length;
    if (from > 0 && LETTER.test(text[from - 1] || "") && LETTER.test(text[from] || "")) {
      while (from > 0 && /\S/.test(text[from - 1])) from--;
    }
    return from;
  }

  function commitFinishedSentences() {
    const text = message.value;
    alignCommitted(text);
    const from = newTextStart(text);
    const rest = text.slice(from);
    const end = finishedUpTo(rest);
    if (end > 0) {
      learnedUpTo(text.slice(0, from + end));
      commitNew(rest.slice(0, end), text.slice(0, from) + rest.slice(end));
    }
    if (fresh) {
      // a space after it ends its sentence too ("noon.| Then": " It rained." typed there), and any
      // character after a Chinese or Japanese mark ("。|我")
      const part = freshText(text, from), after = fresh ? text[fresh.end] || "" : "";
      const done = Math.min(finishedUpTo(part + after), part.length);
      if (done > 0) {
        commitNew(part.slice(0, done), text.slice(0, fresh.start) + text.slice(fresh.start + done));
        fresh.start += done;
        if (fresh.start >= fresh.end) fresh = null;
      }
    }
  }
  // This message's sentences learned, as `sentencesOf` cuts them, and how many times each.
  let learnedSentences = new Map();
  // `done`'s sentences committed, but not those of this message learned already that moved there:
  // an inserted one undone and redone, or a learned one cut and pasted between others or after
  // them (or sent there unfinished), was learned twice. One is moved when it was learned more
  // times than the rest of the message (`elsewhere`) holds it; typed again, it is learned again.
  function commitNew(done, elsewhere) {
    const there = new Map();
    for (const s of sentencesOf(elsewhere)) there.set(s, (there.get(s) || 0) + 1);
    const all = sentencesOf(done), todo = all.filter((s) => {
      const learned = learnedSentences.get(s) || 0, kept = there.get(s) || 0;
      there.set(s, kept + 1);                      // in the message now, learned either way
      if (learned > kept) return false;
      learnedSentences.set(s, learned + 1);
      return true;
    });
    // as written where nothing moved (its line breaks, a long paste's pieces); else what is new
    const text = todo.length === all.length ? done : todo.join(" ") + " ";
    if (todo.length) for (const piece of pieces(text)) commit(message, piece);
  }
  // The fresh span's text; past where new text starts it is new text anyway (learned from there).
  function freshText(text, from) {
    fresh.end = Math.min(fresh.end, from);
    if (fresh.start >= fresh.end) { fresh = null; return ""; }
    return text.slice(fresh.start, fresh.end);
  }


  function send() {
    // the pronoun last typed is written "I" on Enter too ("see you then, i" is sent as "…, I")
    const kept = declined && declined.value === message.value;   // taken back with ⌫: sent as typed
    const typed = !kept && pronounAtEnd(message.value);
    const text = typed ? message.value.slice(0, -typed.length) + capitalise(typed) : message.value;
    if (!text.trim()) return;
    alignCommitted(text);
    const from = newTextStart(text);
    commitNew(text.slice(from), text.slice(0, from));
    const bubble = document.createElement("p");
    bubble.className = "bubble";
    bubble.dir = "auto";          // as the field: Arabic or Hebrew reads right to left here too
    bubble.textContent = text.trim();
    const thread = $("#thread");
    thread.querySelector(".hint")?.remove();
    thread.appendChild(bubble);
    thread.scrollTop = thread.scrollHeight;
    message.value = "";
    committedPrefix = lastText = "";
    learnedPrefixes = [];          // the next message is new text, even if the same
    learnedSentences = new Map();
    fresh = null;
    afterEdit(message);
  }

  function submitPrivate() {
    if (!privateField.value) return;
    privateField.value = "";
    for (let i = undone.length - 1; i >= 0; i--) if (undone[i].field === privateField) undone.splice(i, 1);   // its text too
    toast("Private text cleared: never learned");
  }

  // --- typing ---------------------------------------------------------------------------------

  // An input method's composition (Japanese, Chinese) is in the text as its reading until it is
  // converted ("きょうははれ。あした" for "今日は晴れ。明日は"): the sentence there was learned as read,
  // then again as converted. Nothing is learned while a composition is under way; its end is an edit.
  let composing = false;
  message.addEventListener("compositionstart", () => { composing = true; });
  message.addEventListener("compositionend", () => { composing = false; afterEdit(message); });

  function afterEdit(field) {
    if (field === message) {
      if (!composing) commitFinishedSentences();
      autoShift();
      suggest();
    }
  }

  function insertText(field, str) {
    field.focus();
    corrected = null;
    if (punctuate(field, str)) return;
    autoSpace = null;
    if (pronoun(field, str)) return;
    // On the browser's undo stack, as typing is: set with setRangeText, the page's keys were not,
    // and Ctrl+Z after them undid an older edit around them ("hey" tapped after a deleted text
    // brought it back as "Heysee you…"), or nothing at all after "word. ".
    replaceUndoably(field, str, field.selectionStart, field.selectionEnd);
    afterEdit(field);
  }

  // The page's ⌫ takes one character as the user sees it: an emoji (two UTF-16 units, or seven for
  // a family's joined ones) or a letter with its accents; one unit left half an emoji behind.
  const graphemes = typeof Intl !== "undefined" && Intl.Segmenter ? new Intl.Segmenter(undefined, { granularity: "grapheme" }) : null;
  function charBefore(text, pos) {
    if (graphemes) {
      const from = Math.max(0, pos - 64);   // no character is longer; the text may be long
      let last = from;
      for (const seg of graphemes.segment(text.slice(from, pos))) last = from + seg.index;
      return last;
    }
    const low = text.charCodeAt(pos - 1);
    return pos - (pos >= 2 && low >= 0xDC00 && low <= 0xDFFF ? 2 : 1);
  }
  function backspace(field) {
    field.focus();
    autoSpace = null;
    if (uncorrect(field)) return;
    let start = field.selectionStart;
    const end = field.selectionEnd;
    if (start === end) {
      if (start === 0) return;
      start = charBefore(field.value, start);
    }
    replaceUndoably(field, "", start, end);
    afterEdit(field);
  }

  function enter(field) {
    if (field === message) send(); else submitPrivate();
  }

  function setActive(field) {
    active = field;
    pendingTap = null;
    if (isPrivate(field)) { privateStrip(); setShift(false); } else { autoShift(); suggest(); }
  }

  // --- on-screen keyboard ---------------------------------------------------------------------

  const ROWS = [
    [..."qwertyuiop"],
    [..."asdfghjkl"],
    ["shift", ..."zxcvbnm", "backspace"],
    [",", "space", ".", "enter"],
  ];
  const LABELS = { shift: "⇧", backspace: "⌫", space: "space", enter: "⏎" };
  const ARIA = { shift: "Shift", backspace: "Backspace", space: "Space", enter: "Enter" };

  function buildKeyboard() {
    const kb = $("#keyboard");
    for (const row of ROWS) {
      const r = document.createElement("div");
      r.className = "row";
      for (const k of row) {
        const b = document.createElement("button");
        b.type = "button";
        b.tabIndex = -1;
        b.className = "key" + (k in LABELS ? " fn fn-" + k : "");
        b.dataset.key = k;
        b.textContent = LABELS[k] || k;
        // A letter's name is its text, which Shift changes ("Q"); Shift says whether it is on.
        if (k in ARIA) b.setAttribute("aria-label", ARIA[k]);
        if (k === "shift") b.setAttribute("aria-pressed", "false");
        r.appendChild(b);
      }
      kb.appendChild(r);
    }
    // Keep the caret in the text field: keys must not take focus.
    kb.addEventListener("mousedown", (e) => e.preventDefault());
    // A held ⌫ repeats, as a phone's does: after HOLD_MS, a character every REPEAT_MS until it is
    // let go (held, it took one character, and emptying a sentence took a tap a character).
    kb.addEventListener("pointerdown", (e) => {
      stopRepeat();
      heldRepeated = false;
      const key = e.target.closest('.key[data-key="backspace"]');
      if (!key || e.button !== 0) return;
      // Slid off the key it stops, as a pressed button is let go (the keyboard's own pointerleave
      // let it delete on over the other keys); a touch pointer is captured by the key, and a move
      // there is a pan the browser cancels (pointercancel).
      key.addEventListener("pointerleave", stopRepeat, { once: true });
      repeatTimer = setTimeout(function tick() {
        heldRepeated = true;
        backspace(active);
        repeatTimer = setTimeout(tick, REPEAT_MS);
      }, HOLD_MS);
    });
    for (const ev of ["pointerup", "pointercancel", "pointerleave", "lostpointercapture"]) kb.addEventListener(ev, stopRepeat);
    // A release this page never hears (the window left with the button down: Alt+Tab, a system
    // dialog) deleted on to the start of the message.
    window.addEventListener("blur", stopRepeat);
    document.addEventListener("visibilitychange", stopRepeat);
    kb.addEventListener("contextmenu", (e) => e.preventDefault());   // a long press is a held key, not a menu
    kb.addEventListener("click", (e) => {
      const b = e.target.closest(".key");
      if (!b) return;
      const k = b.dataset.key;
      if (k === "shift") { setShift(!shift); return; }
      if (k === "backspace" && heldRepeated) { heldRepeated = false; return; }   // the release of a held ⌫
      if (k === "backspace") backspace(active);
      else if (k === "enter") enter(active);
      else if (k === "space") insertText(active, " ");
      else {
        const upper = shift;
        if (upper) setShift(false);
        insertText(active, upper ? k.toUpperCase() : k);
      }
    });
  }

  const HOLD_MS = 450, REPEAT_MS = 70;
  let repeatTimer = null, heldRepeated = false;
  function stopRepeat() { clearTimeout(repeatTimer); repeatTimer = null; }

  function setShift(on) {
    shift = on;
    const kb = $("#keyboard");
    kb.classList.toggle("shifted", on);
    kb.querySelector('[data-key="shift"]')?.setAttribute("aria-pressed", String(on));
    for (const b of kb.querySelectorAll(".key:not(.fn)")) {
      b.textContent = on ? b.dataset.key.toUpperCase() : b.dataset.key;
    }
  }

  // --- wiring ---------------------------------------------------------------------------------

  strip.addEventListener("mousedown", (e) => e.preventDefault());
  strip.addEventListener("click", (e) => {
    const b = e.target.closest(".sugg");
    if (b && b === longPressed) { longPressed = null; return; }   // the release of a long press
    if (b && !b.disabled && active === message) accept(b);
  });

  // A strip computed for another text (answers slower than keystrokes) is not applied: its words
  // were for a word no longer there (the CSS dims it until the answer for this text comes). The
  // tap waits for that answer, and takes the word tapped if the answer offers it too: a quick
  // typist's tap on a word that was there all along ("more" after "mo", then "r") was lost.
  function accept(b) {
    const text = textBeforeCursor();
    if (strip.dataset.for !== text) { pendingTap = { word: b.dataset.word, text }; suggest(); return; }
    pendingTap = null;
    applySuggestion(b.dataset.word);
  }
  // After a strip for `text` is shown: the tap that waited for it, if its word is there.
  function takePendingTap(text, words) {
    const tap = pendingTap;
    pendingTap = null;
    // not once the focus went to another control meanwhile (Tab to Send or Clear): the word would
    // go in, and the focus come back to the message, seconds after the user moved on
    const elsewhere = document.activeElement && document.activeElement !== document.body && document.activeElement !== active;
    if (tap && !elsewhere && tap.text === text && textBeforeCursor() === text && words.includes(tap.word)) {
      applySuggestion(tap.word);
    }
  }

  // A long press on a suggestion (the context menu: a right click with a mouse, a long press on
  // Android; a held touch where no context menu comes, as on iOS) stops suggesting that word on
  // this device, until it is typed again (a typo the keyboard learned, a name).
  const LONG_PRESS_MS = 600;
  let removing = "", pressTimer = null, longPressed = null;
  async function removeWord(word) {
    if (!word || removing === word) return;       // one press can raise both events
    removing = word;
    try {
      await api("/api/remove-word", { word });
      // A long press is easy to make by mistake, and the word would stay away until typed in two
      // more texts: the toast offers to take it back.
      toast(`"${word}" is no longer suggested, until you type it again`, () => restoreWord(word));
    } catch (err) {
      toast("Could not remove it: " + err.message);
    } finally {
      removing = "";
    }
    if (active === message) suggest();
  }
  async function restoreWord(word) {
    try {
      await api("/api/remove-word", { word, undo: true });
      toast(`"${word}" is suggested again`);
    } catch (err) {
      toast("Could not bring it back: " + err.message);
    }
    if (active === message) suggest();
  }
  strip.addEventListener("contextmenu", (e) => {
    const b = e.target.closest(".sugg");
    if (!b) return;
    e.preventDefault();
    if (!b.disabled) removeWord(b.dataset.word);
  });
  strip.addEventListener("pointerdown", (e) => {
    const b = e.target.closest(".sugg");
    clearTimeout(pressTimer);
    // A new press: the last long press's release, which may never come as a click (a finger that
    // slid off cancels it), is not waited for any more; it swallowed the next tap on that slot.
    longPressed = null;
    if (e.pointerType !== "touch" || !b || b.disabled) return;
    pressTimer = setTimeout(() => { longPressed = b; removeWord(b.dataset.word); }, LONG_PRESS_MS);
  });
  for (const ev of ["pointerup", "pointercancel", "pointerleave"]) {
    strip.addEventListener(ev, () => clearTimeout(pressTimer));
  }

  // A physical keyboard's punctuation right after a tapped suggestion: same rule as the on-screen one.
  message.addEventListener("beforeinput", (e) => {
    if (e.inputType === "insertText" && e.data && punctuate(message, e.data)) e.preventDefault();
    else if (e.inputType === "insertText" && e.data && pronoun(message, e.data)) { autoSpace = null; e.preventDefault(); }
    else if (e.inputType === "deleteContentBackward" && uncorrect(message)) e.preventDefault();
    else if (e.inputType !== "insertText" || !PUNCT.test(e.data || "")) autoSpace = null;
  });
  message.addEventListener("input", (e) => {
    if (!e.isComposing) composing = false;   // a composition whose end was never said is over
    if (!replacing) { corrected = null; afterEdit(message); }
  });
  message.addEventListener("focus", () => setActive(message));
  // Alt+1, Alt+2, Alt+3 (Control on a Mac) take the best, second and third suggestion (the strip's
  // buttons stay out of the tab order so a tap never moves the caret out of the message).
  const SHORTCUT = { Digit1: "middle", Digit2: "left", Digit3: "right" };
  const MAC = /Mac|iPhone|iPad/.test(navigator.platform || "");
  if (MAC) {   // what a screen reader announces (and a word's tooltip) says the keys that work here
    for (const el of [strip, ...strip.querySelectorAll(".sugg")]) {
      for (const a of ["aria-label", "aria-keyshortcuts", "title"]) {
        if (el.hasAttribute(a)) el.setAttribute(a, el.getAttribute(a).replaceAll("Alt+", "Control+"));
      }
    }
  }
  message.addEventListener("keydown", (e) => {
    // Enter that confirms an input method's composition (Japanese, Chinese) is not "send".
    if (e.isComposing || e.keyCode === 229) return;
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); return; }
    // Only where Alt+digit types nothing: on a Mac, Option+3 is "#" on some layouts (e.key says so),
    // and Option+1 "¡", so there Control+1, 2, 3 (which type nothing and switch no tab) take them.
    const alt = e.altKey && !e.ctrlKey && !e.metaKey && !e.shiftKey && /^[123]$/.test(e.key);
    const macCtrl = MAC && e.ctrlKey && !e.altKey && !e.metaKey && !e.shiftKey;
    const slot = (alt || macCtrl) && SHORTCUT[e.code];
    if (slot) {
      e.preventDefault();
      if (!slots[slot].disabled) accept(slots[slot]);
    }
    // With Shift they stop suggesting that word, as a long press does: without a mouse or a touch
    // screen a word (a typo the keyboard learned) could not be taken out of the strip.
    const gone = e.shiftKey && !e.metaKey && (MAC ? e.ctrlKey && !e.altKey : e.altKey && !e.ctrlKey) && SHORTCUT[e.code];
    if (gone) {
      e.preventDefault();
      if (!slots[gone].disabled && active === message) removeWord(slots[gone].dataset.word);
    }
  });
  // Cursor moves change the text before the cursor too: any key that left the strip computed for
  // another text (arrows, Home, End, and also Page Up/Down, Ctrl+A, Ctrl+Home, which it missed, so
  // the first tap on a suggestion after them only refreshed the strip). A typed key has its own
  // strip on the way already: asked for, or on show. The on-screen Shift follows the caret too (at
  // a sentence's start it is on), as it follows typing.
  function caretMoved() {
    if (textBeforeCursor() !== (inFlight ? askedFor : strip.dataset.for)) { autoShift(); suggest(); }
  }
  message.addEventListener("keyup", caretMoved);
  // Nor a key nor a click moves it on a phone's caret handle, a long press selecting a word, or a
  // screen reader's cursor: the strip stayed on the old text, and a tap there only refreshed it.
  message.addEventListener("selectionchange", () => { if (active === message) caretMoved(); });
  message.addEventListener("click", () => { autoShift(); suggest(); });

  privateField.addEventListener("focus", () => setActive(privateField));
  privateField.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); submitPrivate(); } });

  $("#send").addEventListener("mousedown", (e) => e.preventDefault());
  // Nor does a click on Clear or on the Pause switch take the focus from the text: left on them,
  // the next keys typed went nowhere, and a space within 4 s of a first click on Clear was its
  // second tap, which cleared the history. (Tab still reaches both, for Space and Enter.)
  $("#clear-history").addEventListener("mousedown", (e) => e.preventDefault());
  // (the switch's label hands its click to the checkbox, which takes the focus: given back after
  // a pointer's click, whose `detail` counts clicks; Space on the focused switch has none)
  $(".toggle").addEventListener("click", (e) => { if (e.detail > 0) setTimeout(() => active.focus()); });
  $("#send").addEventListener("click", () => { setActive(message); send(); message.focus(); });

  // One tap's change at a time, in the order tapped: two quick taps sent at once could be applied
  // in either order, and learning stayed paused though the last tap resumed it.
  let pausing = Promise.resolve(), pauseTaps = 0;   // (reportedPaused: renderStatus's, above)
  $("#pause-toggle").addEventListener("change", (e) => {
    const paused = e.target.checked, mine = ++pauseTaps;
    pausing = pausing.then(async () => {
      try {
        // within the strip's wait: a hung answer held every later tap behind it, unsaid
        const st = await api("/api/pause", { paused }, ANSWER_TIMEOUT_MS);
        if (mine !== pauseTaps) return;          // a later tap's answer says how it ends
        renderStatus(st);
        toast(st.paused ? "Learning paused: nothing new is saved" : "Learning resumed");
      } catch (err) {
        // back as the device last said it was: left as clicked, it would show a change that did not
        // happen (after two taps that both failed, "the tap before" was a state it never had)
        if (mine === pauseTaps) e.target.checked = reportedPaused ?? !paused;
        toast("Could not change: " + err.message);
        refreshStatus();
      }
    });
  });

  const clearBtn = $("#clear-history");
  clearBtn.addEventListener("click", async () => {
    if (!clearArmed) {   // first tap arms, the second within 4 s clears
      clearBtn.classList.add("armed");
      clearBtn.textContent = "Tap again to clear";
      clearArmed = setTimeout(disarm, 4000);
      return;
    }
    disarm();
    generation++;                                  // not sent yet: forgotten with the rest
    unsaved = [];
    serially(async () => {                         // after the commit in flight, if any
      try {
        renderStatus(await api("/api/clear", {}));
        toast("History cleared from this device");
      } catch (err) {
        toast("Could not clear: " + err.message);
      }
    });
  });
  function disarm() {
    clearTimeout(clearArmed);
    clearArmed = null;
    clearBtn.classList.remove("armed");
    clearBtn.textContent = "Clear my history";
  }

  // The notices travel in the version's signed manifest (e.g. the word list's CC BY-SA 4.0
  // attribution); shown as text, never as markup.
  const licences = $("#licences");
  $("#show-licences").addEventListener("click", async () => {
    if (licences.open) return;
    const parts = [];   // built first, put in at once: a second click meanwhile cannot double them
    try {
      const n = await api("/api/notices");
      if (!n.notices.length) {
        parts.push(n.version_id ? "Model " + n.version_id + ": its files came with no licence notices."
          : "No model yet.");
      }
      for (const { file, text } of n.notices) {
        const h = document.createElement("h3");
        h.textContent = file + " (model " + n.version_id + ")";
        const pre = document.createElement("pre");
        pre.textContent = text;
        parts.push(h, pre);
      }
    } catch (err) {
      parts.push("Could not load the notices: " + err.message);
    }
    $("#licences-body").replaceChildren(...parts);
    if (!licences.open) licences.showModal();
  });
  $("#close-licences").addEventListener("click", () => licences.close());

  // On a touch screen (a phone, a tablet) a tap in a field brought up the system's own keyboard,
  // over this one and its strip: the suggestions under test were hidden, and the words typed
  // were the system keyboard's. There the fields ask for none; a physical keyboard still types.
  const touchFirst = window.matchMedia ? matchMedia("(pointer: coarse)") : null;
  function systemKeyboard() {
    for (const f of [message, privateField]) {
      if (touchFirst?.matches) f.inputMode = "none"; else f.removeAttribute("inputmode");
    }
  }
  systemKeyboard();
  touchFirst?.addEventListener?.("change", systemKeyboard);

  buildKeyboard();
  renderSuggestions([]);
  refreshStatus().then(() => suggest());
  setInterval(refreshStatus, 5000);
  message.focus();
})();
