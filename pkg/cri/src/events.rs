//! GetContainerEvents: container and pod lifecycle events for kubelet's evented PLEG.
//!
//! Every subscriber has its own bounded queue. Publishing never waits: a subscriber whose queue
//! is full is dropped (its stream ends), because a daemon that waits for its slowest reader
//! stops running containers. kubelet resubscribes and relists when its stream ends.

use std::sync::Mutex;

use k8s_cri::v1;
use tokio::sync::mpsc;

/// Events a subscriber may have in flight before it counts as stuck.
pub const SUBSCRIBER_QUEUE: usize = 1024;

#[derive(Default)]
pub struct EventHub {
    subscribers: Mutex<Vec<mpsc::Sender<v1::ContainerEventResponse>>>,
}

impl EventHub {
    pub fn subscribe(&self) -> mpsc::Receiver<v1::ContainerEventResponse> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        crate::sandbox::lock(&self.subscribers).push(tx);
        rx
    }

    pub fn subscribers(&self) -> usize {
        crate::sandbox::lock(&self.subscribers).len()
    }

    /// Sends `event` to every subscriber that keeps up; forgets the others.
    pub fn publish(&self, event: v1::ContainerEventResponse) {
        let mut subs = crate::sandbox::lock(&self.subscribers);
        if subs.is_empty() {
            return;
        }
        subs.retain(|tx| match tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    queue = SUBSCRIBER_QUEUE,
                    "dropping a container event subscriber that stopped reading"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> v1::ContainerEventResponse {
        v1::ContainerEventResponse {
            container_id: id.into(),
            container_event_type: v1::ContainerEventType::ContainerCreatedEvent as i32,
            ..Default::default()
        }
    }

    #[test]
    fn every_subscriber_gets_every_event_in_order() {
        let hub = EventHub::default();
        let mut a = hub.subscribe();
        let mut b = hub.subscribe();
        for i in 0..5 {
            hub.publish(event(&i.to_string()));
        }
        for rx in [&mut a, &mut b] {
            let got: Vec<String> = (0..5)
                .map(|_| rx.try_recv().expect("event").container_id)
                .collect();
            assert_eq!(got, ["0", "1", "2", "3", "4"]);
        }
    }

    #[test]
    fn a_stuck_subscriber_is_dropped_and_the_others_keep_going() {
        let hub = EventHub::default();
        let stuck = hub.subscribe();
        let mut live = hub.subscribe();
        for i in 0..SUBSCRIBER_QUEUE + 10 {
            hub.publish(event(&i.to_string()));
            // The live one keeps up.
            assert_eq!(live.try_recv().expect("event").container_id, i.to_string());
        }
        assert_eq!(hub.subscribers(), 1);
        drop(stuck);
        drop(live);
        hub.publish(event("x"));
        assert_eq!(hub.subscribers(), 0);
    }
}
