//! A future polled only after it woke its task.
//!
//! A connection's task waits on its connection and on a few watchers (the drain, its idle and
//! stall timers, requests to close or park). Nearly every wake is the connection's: a request's
//! bytes, a write's room. A `select!` would poll every watcher on each of those wakes too, which
//! costs more per request (locks of tokio's `Notify`, timer registrations) than any other part
//! of prefork's own path. Behind a [`Gated`], the watchers are polled only when one of them woke
//! the task.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use pin_project_lite::pin_project;

pin_project! {
    /// Polls `inner` on its task's first poll and then only when `inner` woke the task.
    pub(crate) struct Gated<F> {
        #[pin]
        inner: F,
        woken: Arc<Woken>,
        // Made once: `inner` is polled with it.
        waker: Waker,
    }
}

impl<F: Future> Gated<F> {
    pub(crate) fn new(inner: F) -> Self {
        let woken = Arc::new(Woken {
            // Set, so that the first poll lets `inner` register its wakers.
            pending: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(Arc::clone(&woken));
        Self {
            inner,
            woken,
            waker,
        }
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Registered before the flag is read: a wake after the read then reaches this task.
        this.woken.task.register(cx.waker());
        // Acquire: what `inner`'s waker made ready before it set the flag is seen here.
        if !this.woken.pending.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        this.inner.poll(&mut Context::from_waker(this.waker))
    }
}

/// What `inner`'s wakers wake: they mark it to be polled, then wake the task.
struct Woken {
    pending: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.pending.store(true, Ordering::Release);
        self.task.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Counts its polls; ready once `ready` is set, waking through the waker it last saw.
    struct Watcher {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Watcher {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.ready.load(Ordering::Relaxed) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn polls_its_future_only_after_that_future_woke_the_task() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let inner_waker = Arc::new(std::sync::Mutex::new(None::<Waker>));
        let mut gated = Box::pin(Gated::new(Watcher {
            polls: Arc::clone(&polls),
            ready: Arc::clone(&ready),
            waker: Arc::clone(&inner_waker),
        }));
        let task = Arc::new(CountingWaker::default());
        let task_waker = Waker::from(Arc::clone(&task));
        let mut cx = Context::from_waker(&task_waker);

        assert!(gated.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::Relaxed),
            1,
            "the first poll reaches it"
        );
        // Wakes of the task by something else: the watcher is left alone.
        for _ in 0..5 {
            assert!(gated.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);

        ready.store(true, Ordering::Relaxed);
        let waker = inner_waker.lock().unwrap().take().unwrap();
        waker.wake();
        assert_eq!(
            task.0.load(Ordering::Relaxed),
            1,
            "its wake reaches the task"
        );
        assert!(gated.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}
