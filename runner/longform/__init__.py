"""Whole recordings: cutting them into segments (`segment`), translating the segments and writing subtitles
(`recording`), and IWSLT-style evaluation of whole talks re-aligned to their references (`iwslt`)."""
