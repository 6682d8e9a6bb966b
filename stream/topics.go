package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// DefaultTopicBucket is the key-value bucket that lists the custom topics.
const DefaultTopicBucket = "TABLECAST_TOPICS"

// ErrTopicExists is returned by CreateTopic for a topic that exists.
var ErrTopicExists = errors.New("topic exists")

// ErrNoTopic is returned by DestroyTopic for a topic that does not exist.
var ErrNoTopic = errors.New("no such topic")

// Topics is the list of custom topics, shared by every gateway through a
// JetStream key-value bucket: one key per topic. A topic's messages live in
// the event stream on TopicSubject(prefix, name), so that they have stream
// sequences like row changes do.
type Topics struct {
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	stream jetstream.Stream
	prefix string
}

// TopicInfo is the value stored for a topic.
type TopicInfo struct {
	Created time.Time `json:"created"`
}

// OpenTopics creates the bucket if missing. str is the event stream, whose
// messages of a destroyed topic are purged.
func OpenTopics(ctx context.Context, js jetstream.JetStream, str jetstream.Stream, prefix, bucket string, replicas int) (*Topics, error) {
	if bucket == "" {
		bucket = DefaultTopicBucket
	}
	var kv jetstream.KeyValue
	err := retry(ctx, retryWithin, func(ctx context.Context) (err error) {
		kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      bucket,
			Description: "tablecast custom topics",
			History:     1,
			Replicas:    max(replicas, 1),
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open topic bucket %s: %w", bucket, err)
	}
	return &Topics{js: js, kv: kv, stream: str, prefix: prefix}, nil
}

// TopicKey is the bucket key of a topic name (escaped as SchemaKey does).
func TopicKey(name string) string { return kvKey(name) }

// TopicName reverses TopicKey.
func TopicName(key string) (string, error) {
	b := make([]byte, 0, len(key))
	for i := 0; i < len(key); i++ {
		if key[i] != '=' {
			b = append(b, key[i])
			continue
		}
		if i+2 >= len(key) || unhex(key[i+1]) < 0 || unhex(key[i+2]) < 0 {
			return "", fmt.Errorf("topic key %q: bad escape at byte %d", key, i)
		}
		b = append(b, byte(unhex(key[i+1])<<4|unhex(key[i+2])))
		i += 2
	}
	return string(b), nil
}

// CreateTopic adds a topic; ErrTopicExists if it is there already.
func (t *Topics) CreateTopic(ctx context.Context, name string) error {
	v, _ := json.Marshal(TopicInfo{Created: time.Now().UTC()})
	if _, err := t.kv.Create(ctx, TopicKey(name), v); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return ErrTopicExists
		}
		return fmt.Errorf("create topic %q: %w", name, err)
	}
	return nil
}

// DestroyTopic removes a topic and purges its messages from the stream, so a
// topic created again later starts empty. ErrNoTopic if it does not exist.
func (t *Topics) DestroyTopic(ctx context.Context, name string) error {
	key := TopicKey(name)
	if _, err := t.kv.Get(ctx, key); err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return ErrNoTopic
		}
		return fmt.Errorf("destroy topic %q: %w", name, err)
	}
	if err := t.kv.Purge(ctx, key); err != nil {
		return fmt.Errorf("destroy topic %q: %w", name, err)
	}
	if err := t.stream.Purge(ctx, jetstream.WithPurgeSubject(TopicSubject(t.prefix, name))); err != nil {
		return fmt.Errorf("purge messages of topic %q: %w", name, err)
	}
	return nil
}

// Watch follows the topics: each existing one, a nil entry once they have
// all been sent, then every creation (put) and destruction (delete or
// purge).
func (t *Topics) Watch(ctx context.Context) (jetstream.KeyWatcher, error) {
	w, err := WatchKV(ctx, t.js, t.kv, ">", false)
	if err != nil {
		return nil, fmt.Errorf("watch topics: %w", err)
	}
	return w, nil
}
