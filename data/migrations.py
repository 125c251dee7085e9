"""The store's schema, as ordered migrations.

Each entry is (version, statements). `Store` applies the ones newer than the file's
`schema_version`, each in its own transaction together with its version row, so a
crash mid-migration leaves the file at the previous version. Never edit a released
migration: append a new one.

Column meanings follow Pick-a-Pic (see docs/ARCHITECTURE.md, "Data model"):
label_0/label_1 are 1/0, 0/1 or 0.5/0.5 (tie), best_image_uid is the winner's uid or
'none' for a tie; both-bad and skip votes keep NULL labels and are never exported.
"""

MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """
            CREATE TABLE users (
                user_id    BIGINT PRIMARY KEY,
                name       VARCHAR NOT NULL UNIQUE,
                created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
                banned     BOOLEAN NOT NULL DEFAULT false
            )
            """,
            """
            CREATE TABLE images (
                image_uid      VARCHAR PRIMARY KEY,
                jpg            BLOB NOT NULL,
                prompt         VARCHAR,
                model          VARCHAR,
                seed           BIGINT,
                guidance_scale DOUBLE,
                steps          INTEGER,
                scheduler      VARCHAR,
                width          INTEGER,
                height         INTEGER,
                gen_ms         DOUBLE,
                url            VARCHAR,
                created_at     TIMESTAMP NOT NULL DEFAULT current_timestamp
            )
            """,
            """
            CREATE TABLE rankings (
                ranking_id             BIGINT PRIMARY KEY,
                vote_id                VARCHAR UNIQUE,
                caption                VARCHAR NOT NULL,
                image_0_uid            VARCHAR NOT NULL,
                image_1_uid            VARCHAR NOT NULL,
                label_0                DOUBLE,
                label_1                DOUBLE,
                best_image_uid         VARCHAR,
                user_id                BIGINT NOT NULL,
                created_at             TIMESTAMP_NS NOT NULL,
                has_label              BOOLEAN NOT NULL,
                num_example_per_prompt BIGINT,
                shown_left             TINYINT CHECK (shown_left IN (0, 1)),
                dwell_ms               INTEGER,
                outcome                VARCHAR NOT NULL
                    CHECK (outcome IN ('left', 'right', 'tie', 'both_bad', 'skip')),
                source                 VARCHAR NOT NULL,
                is_gold                BOOLEAN NOT NULL DEFAULT false,
                split                  VARCHAR NOT NULL DEFAULT 'train'
            )
            """,
        ],
    ),
    (
        2,
        [
            # The known answer of a gold (control) pair, kept apart from the Pick-a-Pic
            # columns: one row per gold vote, written in the vote's transaction.
            """
            CREATE TABLE gold_answers (
                vote_id        VARCHAR PRIMARY KEY,
                best_image_uid VARCHAR NOT NULL
            )
            """,
        ],
    ),
    (
        3,
        [
            # The round of `python -m rounds` whose model made the image; NULL for any
            # other model (the base of a run included).
            "ALTER TABLE images ADD COLUMN model_round INTEGER",
        ],
    ),
    (
        4,
        [
            # Which of the paper's questions a vote answers (data.store.QUESTIONS); a
            # vote on all three is three rows, the general preference under the round's
            # vote_id and the others under vote_id/question.
            "ALTER TABLE rankings ADD COLUMN question VARCHAR DEFAULT 'preference'",
            "UPDATE rankings SET question = 'preference' WHERE question IS NULL",
            # Pairs that should get votes from `votes_wanted` different annotators,
            # written with the pair's first vote.
            """
            CREATE TABLE overlap (
                image_0_uid  VARCHAR NOT NULL,
                image_1_uid  VARCHAR NOT NULL,
                caption      VARCHAR NOT NULL,
                votes_wanted INTEGER NOT NULL CHECK (votes_wanted >= 2),
                created_at   TIMESTAMP NOT NULL DEFAULT current_timestamp,
                PRIMARY KEY (image_0_uid, image_1_uid)
            )
            """,
        ],
    ),
    (
        5,
        [
            # Each shard file an import completed, written in the transaction of its
            # pairs: a rerun skips a file with the same path, size and modification time
            # (one killed before its end re-checks only the files it had not finished).
            """
            CREATE TABLE imported_files (
                path        VARCHAR NOT NULL,
                size        BIGINT NOT NULL,
                mtime_ns    BIGINT NOT NULL,
                rows        BIGINT NOT NULL,
                added       BIGINT NOT NULL,
                source      VARCHAR NOT NULL,
                split       VARCHAR NOT NULL,
                imported_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
                PRIMARY KEY (path, size, mtime_ns)
            )
            """,
        ],
    ),
    (
        6,
        [
            # Unlabelled pairs made ahead of time (`python -m annotate pool`), for the page
            # to show without a wait; a pool is the run that made its pairs.
            """
            CREATE TABLE pool (
                pair_id     VARCHAR PRIMARY KEY,
                pool        VARCHAR NOT NULL,
                caption     VARCHAR NOT NULL,
                image_0_uid VARCHAR NOT NULL,
                image_1_uid VARCHAR NOT NULL,
                created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
            )
            """,
        ],
    ),
]

LATEST_VERSION = MIGRATIONS[-1][0]
