-- Free-form questions about a request (kind 'question'), and listing a user's analyses.
ALTER TABLE analyses ADD COLUMN question text;
ALTER TABLE analyses DROP CONSTRAINT analyses_kind_check;
ALTER TABLE analyses ADD CONSTRAINT analyses_kind_check
    CHECK (kind IN ('compare_proposals', 'summarize_request', 'question'));
-- a question exactly for kind 'question', 1..2000 characters
ALTER TABLE analyses ADD CONSTRAINT analyses_question_check
    CHECK ((kind = 'question') = (question IS NOT NULL)
           AND (question IS NULL OR char_length(question) BETWEEN 1 AND 2000));
-- GET /api/v1/analyses for admins (everything, newest first) and by owner
CREATE INDEX analyses_created ON analyses (created_at DESC, id DESC);
