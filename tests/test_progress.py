"""pipeline/progress.py: rank 0's posts to the driver's board are throttled (one a second), yet
the driver still sees every point with validation scores and the run's last point."""
import ray

from pipeline.progress import Poster, ProgressBoard, progress_line


def ready_board():
    """A board that is up and running before the posts begin. Once in a full suite run, this
    test process's Ray driver never heard that a new actor was ALIVE (GCS had created it in
    10 ms; the driver's log shows no state after DEPENDENCIES_UNREADY), so a board that does
    not answer in 30 s is replaced by a new one, once."""
    for attempt in range(2):
        board = ProgressBoard.remote()
        try:
            ray.get(board.take.remote(0.0), timeout=30)
            return board
        except ray.exceptions.GetTimeoutError:
            ray.kill(board)
            if attempt:
                raise


def taken_steps(board, expected: int) -> list[int]:
    """Steps of the points on the board, in order (an async actor may run a caller's posts out of
    order, so collect until `expected` points arrived or 10 s passed)."""
    points = []
    for _ in range(10):
        points += ray.get(board.take.remote(1.0), timeout=60)
        if len(points) >= expected:
            break
    return sorted(p["step"] for p in points)


def test_poster_throttles_but_keeps_validation_points_and_the_last(ray_local):
    board = ready_board()
    post = Poster(board, every=60.0)  # within the test, every point after the first is "too soon"
    post({"step": 10, "mse": 0.5})
    post({"step": 20, "mse": 0.4})                      # held back
    post({"step": 30, "mse": 0.3, "val_mse": 0.35})     # validation scores: always posted
    post({"step": 40, "mse": 0.2})                      # held back ...
    post({"step": 50, "mse": 0.1})                      # ... and replaced by the newer point
    post.close()                                        # the last point reaches the driver
    post.close()                                        # once
    assert taken_steps(board, 3) == [10, 30, 50]
    assert progress_line({"step": 50, "mse": 0.1}, 50, ("mse",), 3.2) == "  step 50/50 | mse 0.1 | 3s"
    ray.kill(board)


def test_poster_without_throttle_posts_every_point(ray_local):
    board = ready_board()
    post = Poster(board, every=0.0)
    for step in (1, 2, 3):
        post({"step": step})
    post.close()
    assert taken_steps(board, 3) == [1, 2, 3]
    ray.kill(board)
