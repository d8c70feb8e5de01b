//! Topic ids seen in Metadata responses, so requests that name topics by id (Fetch v13+,
//! Produce v13) can be authorized by name. Shared by every connection of the proxy.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use kafka_protocol::messages::{MetadataResponse, TopicName};
use uuid::Uuid;

use crate::authorize::TopicNames;

/// The id → name registry.
#[derive(Default)]
pub struct TopicIds {
    names: RwLock<HashMap<Uuid, TopicName>>,
}

impl TopicIds {
    /// Records the ids of every named topic in a Metadata response.
    pub fn learn(&self, response: &MetadataResponse) {
        let mut names = self.names.write().unwrap_or_else(PoisonError::into_inner);
        for topic in &response.topics {
            if let Some(name) = &topic.name
                && !topic.topic_id.is_nil()
                && topic.error_code == 0
            {
                names.insert(topic.topic_id, name.clone());
            }
        }
    }

    /// The name of topic `id`, if a Metadata response has named it.
    pub fn name_of(&self, id: &Uuid) -> Option<TopicName> {
        self.names
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }
}

impl TopicNames for TopicIds {
    fn name_of(&self, id: &Uuid) -> Option<TopicName> {
        TopicIds::name_of(self, id)
    }
}
