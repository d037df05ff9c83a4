"""Environments: task generators, prompts, demonstrations and reward specs (text-to-SQL, the
local-services world, local life) and the tokenizer corpus builder."""
