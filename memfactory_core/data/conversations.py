"""Conversation data: LoCoMo, LongMemEval and files in LoCoMo's format (the bundled sample).

Every error names the file, the record's line, the conversation (or question) and the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from memfactory_core.data.episode import QA, Conversation, Episode, Session, Turn
from memfactory_core.data.hotpotqa import iter_json_records
from memfactory_core.errors import DataError, MemFactoryError

#: LoCoMo question categories, numbered as in the data (Memory-R1's reading of them)
LOCOMO_CATEGORIES: dict[int, str] = {
    1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial",
}
#: Memory-R1's split of LoCoMo's ten conversations
LOCOMO_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("conv-26",),
    "validation": ("conv-30",),
    "test": ("conv-41", "conv-42", "conv-43", "conv-44", "conv-47", "conv-48", "conv-49",
             "conv-50"),
}
#: The answer a category-5 (adversarial) question expects: the conversation does not say.
ABSTENTION_ANSWER = "Not mentioned in the conversation"

_TURN_ID = re.compile(r"D(\d+):(\d+)")
_SESSION_KEY = re.compile(r"session_(\d+)")


def parse_evidence(values: Any) -> list[str]:
    """Turn ids such as ``D3:5`` found in LoCoMo evidence (a list of strings, sometimes with
    several ids in one string)."""
    items = values if isinstance(values, list) else [values]
    found = []
    for item in items:
        for s, t in _TURN_ID.findall(str(item)):
            found.append(f"D{int(s)}:{int(t)}")
    return list(dict.fromkeys(found))


def session_of(turn_id: str) -> int | None:
    """The session number of a ``D<session>:<turn>`` id."""
    m = _TURN_ID.fullmatch(turn_id)
    return int(m.group(1)) if m else None


class _Where:
    def __init__(self, path: str, line: int, conv: str) -> None:
        self.path, self.line, self.conv = path, line, conv

    def error(self, message: str, field: str) -> DataError:
        return DataError(self.path, f"conversation {self.conv!r}: {message}", line=self.line,
                         field=field)

    def need(self, obj: dict[str, Any], key: str, kind: type | tuple[type, ...], field: str) -> Any:
        if key not in obj:
            raise self.error(f"missing field {field!r}", field)
        value = obj[key]
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.error(f"field {field!r} should be {names}, got {type(value).__name__}",
                             field)
        return value


def _locomo_conversation(rec: dict[str, Any], where: _Where, sessions: int | None
                         ) -> Conversation:
    conv = where.need(rec, "conversation", dict, "conversation")
    speakers = [where.need(conv, k, str, f"conversation.{k}") for k in ("speaker_a", "speaker_b")]
    numbers = sorted(int(m.group(1)) for k, v in conv.items()
                     if (m := _SESSION_KEY.fullmatch(k)) and isinstance(v, list) and v)
    if not numbers:
        raise where.error("no sessions (expected conversation.session_1, ...)", "conversation")
    if sessions is not None:
        numbers = numbers[:sessions]
    observations = rec.get("observation") if isinstance(rec.get("observation"), dict) else {}
    out = []
    for n in numbers:
        key = f"session_{n}"
        time = where.need(conv, f"{key}_date_time", str, f"conversation.{key}_date_time")
        facts: dict[str, list[str]] = {}
        obs = observations.get(f"{key}_observation") or {}
        for items in (obs.values() if isinstance(obs, dict) else []):
            for item in items if isinstance(items, list) else []:
                if isinstance(item, list) and len(item) >= 2 and isinstance(item[0], str):
                    for tid in parse_evidence(item[1]):
                        facts.setdefault(tid, []).append(item[0])
        turns = []
        for j, raw in enumerate(conv[key]):
            field = f"conversation.{key}[{j}]"
            if not isinstance(raw, dict):
                raise where.error(f"a turn should be an object, got {type(raw).__name__}", field)
            speaker = where.need(raw, "speaker", str, f"{field}.speaker")
            tid = where.need(raw, "dia_id", str, f"{field}.dia_id")
            text = where.need(raw, "text", str, f"{field}.text")
            caption = raw.get("blip_caption")
            if isinstance(caption, str) and caption:
                text = f"{text} [shares a photo: {caption}]"
            turns.append(Turn(id=tid, speaker=speaker, text=text, session=n, time=time,
                              facts=facts.get(tid, [])))
        out.append(Session(index=n, time=time, turns=turns))
    return Conversation(speakers=speakers, sessions=out)


def _locomo_questions(rec: dict[str, Any], where: _Where, sid: str, sessions_read: set[int],
                      categories: set[int], limited: bool) -> list[QA]:
    qas = where.need(rec, "qa", list, "qa")
    out = []
    for j, raw in enumerate(qas):
        field = f"qa[{j}]"
        if not isinstance(raw, dict):
            raise where.error(f"a question should be an object, got {type(raw).__name__}", field)
        question = where.need(raw, "question", str, f"{field}.question")
        category = where.need(raw, "category", int, f"{field}.category")
        if category not in LOCOMO_CATEGORIES:
            raise where.error(f"unknown category {category} (expected 1-5)", f"{field}.category")
        evidence = parse_evidence(where.need(raw, "evidence", list, f"{field}.evidence"))
        meta: dict[str, Any] = {"category_name": LOCOMO_CATEGORIES[category]}
        if category == 5:
            adv = raw.get("adversarial_answer", raw.get("answer"))
            if adv is None:
                raise where.error(f"missing field '{field}.adversarial_answer'",
                                  f"{field}.adversarial_answer")
            meta["adversarial_answer"] = str(adv)
            answers = [ABSTENTION_ANSWER]
        else:
            answer = where.need(raw, "answer", (str, int, float), f"{field}.answer")
            answers = [str(answer)]
        if category not in categories:
            continue
        if limited and (not evidence or any(session_of(e) not in sessions_read
                                            for e in evidence)):
            continue
        out.append(QA(id=f"{sid}/q{j}", question=question, answers=answers,
                      evidence=evidence, category=category, meta=meta))
    return out


def load_locomo(
    path: str | Path,
    conversations: Sequence[str] | None = None,
    split: str | None = None,
    sessions: int | None = None,
    categories: Iterable[int] = (1, 2, 3, 4),
) -> list[Episode]:
    """LoCoMo-format conversations as episodes (one per conversation).

    ``conversations`` (sample ids) or ``split`` (Memory-R1's train / validation / test) pick
    conversations; ``sessions`` reads only the first N sessions and keeps a question only when
    all its evidence lies in them. Category 5 (adversarial) is left out unless asked for;
    its expected answer is an abstention."""
    if sessions is not None and sessions < 1:
        raise MemFactoryError(f"sessions must be at least 1, got {sessions}")
    wanted: set[str] | None = None
    if split is not None:
        if split not in LOCOMO_SPLITS:
            raise MemFactoryError(f"unknown LoCoMo split {split!r}; known: "
                                  f"{', '.join(LOCOMO_SPLITS)}")
        wanted = set(LOCOMO_SPLITS[split])
    if conversations is not None:
        wanted = set(conversations) if wanted is None else wanted & set(conversations)
    cats = set(categories)
    bad = cats - set(LOCOMO_CATEGORIES)
    if bad:
        raise MemFactoryError(f"unknown LoCoMo categories {sorted(bad)}; known: 1-5")
    name = str(path)
    episodes = []
    seen: list[str] = []
    for line, rec in iter_json_records(path):
        sid = rec.get("sample_id")
        if not isinstance(sid, str) or not sid:
            raise DataError(name, f"record {len(seen) + 1}: missing field 'sample_id'",
                            line=line, field="sample_id")
        seen.append(sid)
        if wanted is not None and sid not in wanted:
            continue
        where = _Where(name, line, sid)
        conv = _locomo_conversation(rec, where, sessions)
        read = {s.index for s in conv.sessions}
        qas = _locomo_questions(rec, where, sid, read, cats, sessions is not None)
        episodes.append(Episode(
            id=sid, conversation=conv, questions=qas,
            meta={"format": "locomo", "sessions": len(conv.sessions),
                  "turns": sum(len(s.turns) for s in conv.sessions),
                  "given_facts": sum(len(t.facts) for t in conv.turns())},
        ))
    if wanted is not None:
        missing = sorted(wanted - set(seen))
        if missing:
            raise MemFactoryError(f"{name}: no conversation(s) {', '.join(missing)}; the file "
                                  f"has: {', '.join(seen)}")
    return episodes


def load_longmemeval(path: str | Path, sessions: int | None = None) -> list[Episode]:
    """LongMemEval records (one question over its own haystack of sessions) as episodes.

    Turn ids are ``<session id>:<n>``; a question's evidence is the turns marked
    ``has_answer`` in its answer sessions (all their turns when none is marked). Questions
    whose id ends in ``_abs`` expect an abstention (``meta.abstention``)."""
    name = str(path)
    episodes = []
    for line, rec in iter_json_records(path):
        qid = rec.get("question_id")
        if not isinstance(qid, str) or not qid:
            raise DataError(name, "missing field 'question_id'", line=line, field="question_id")
        where = _Where(name, line, qid)
        question = where.need(rec, "question", str, "question")
        answer = where.need(rec, "answer", (str, int, float), "answer")
        qtype = where.need(rec, "question_type", str, "question_type")
        hs = where.need(rec, "haystack_sessions", list, "haystack_sessions")
        ids = where.need(rec, "haystack_session_ids", list, "haystack_session_ids")
        dates = where.need(rec, "haystack_dates", list, "haystack_dates")
        answer_ids = set(where.need(rec, "answer_session_ids", list, "answer_session_ids"))
        if not len(hs) == len(ids) == len(dates):
            raise where.error(
                f"haystack_sessions ({len(hs)}), haystack_session_ids ({len(ids)}) and "
                f"haystack_dates ({len(dates)}) differ in length", "haystack_sessions")
        out_sessions = []
        evidence: list[str] = []
        for i, (session, sid, date) in enumerate(zip(hs, ids, dates, strict=True)):
            if sessions is not None and i >= sessions:
                break
            if not isinstance(session, list):
                raise where.error("a session should be a list of turns",
                                  f"haystack_sessions[{i}]")
            turns = []
            for j, raw in enumerate(session):
                field = f"haystack_sessions[{i}][{j}]"
                if not isinstance(raw, dict):
                    raise where.error("a turn should be an object", field)
                role = where.need(raw, "role", str, f"{field}.role")
                content = where.need(raw, "content", str, f"{field}.content")
                turn = Turn(id=f"{sid}:{j + 1}", speaker=role, text=content, session=i + 1,
                            time=str(date), meta={"session_id": str(sid)})
                turns.append(turn)
                if sid in answer_ids and raw.get("has_answer"):
                    evidence.append(turn.id)
            if sid in answer_ids and not any(t.id in evidence for t in turns):
                evidence.extend(t.id for t in turns)
            out_sessions.append(Session(index=i + 1, time=str(date), turns=turns))
        qa = QA(id=qid, question=question, answers=[str(answer)], evidence=evidence,
                category=qtype, meta={"abstention": qid.endswith("_abs"),
                                      "question_date": rec.get("question_date")})
        episodes.append(Episode(id=qid, conversation=Conversation(
            speakers=["user", "assistant"], sessions=out_sessions), questions=[qa],
            meta={"format": "longmemeval", "sessions": len(out_sessions)}))
    return episodes
