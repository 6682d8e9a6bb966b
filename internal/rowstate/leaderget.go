package rowstate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// leaderGetTimeout bounds the wait for a leader's answer to lastFromLeader,
// as jetstream bounds its own API requests by default.
const leaderGetTimeout = 5 * time.Second

// lastFromLeader returns the last message of subject in stream name as the
// stream's leader holds it, with its stream sequence (ErrMsgNotFound when
// there is none); subject may hold wildcards (the last message of any
// subject it matches). A direct
// get may be answered by any replica, one of which can lag behind writes
// already acknowledged; the maintainer, reading back a row it wrote in an
// earlier batch (a TOASTed value to carry over, a version not to write
// back over), must see that write, so on a replicated rows stream it asks
// the leader.
//
// The wait for the answer is bounded by leaderGetTimeout: a request that
// reaches no leader (its node just died, the replicas are electing the
// next) gets no answer at all, and nats.go waits for one as long as ctx
// lasts. A maintainer waiting for good applies nothing more, and the
// reader, waiting for the state to look up old rows, stands still.
func lastFromLeader(ctx context.Context, nc *nats.Conn, name, subject string) (uint64, nats.Header, []byte, error) {
	req, err := json.Marshal(struct {
		LastBySubject string `json:"last_by_subj"`
	}{subject})
	if err != nil {
		return 0, nil, nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, leaderGetTimeout)
	defer cancel()
	msg, err := nc.RequestWithContext(rctx, "$JS.API.STREAM.MSG.GET."+name, req)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("get the last message of %s from stream %s's leader: %w", subject, name, err)
	}
	var resp struct {
		Message *struct {
			Seq    uint64 `json:"seq"`
			Header []byte `json:"hdrs"`
			Data   []byte `json:"data"`
		} `json:"message"`
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return 0, nil, nil, fmt.Errorf("get the last message of %s from stream %s's leader: %w", subject, name, err)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrCode == 10037: // no message (JSNoMessageFoundErr)
		return 0, nil, nil, jetstream.ErrMsgNotFound
	case resp.Error != nil:
		return 0, nil, nil, fmt.Errorf("get the last message of %s from stream %s's leader: %s (%d)", subject, name, resp.Error.Description, resp.Error.ErrCode)
	case resp.Message == nil:
		return 0, nil, nil, errors.New("get the last message of " + subject + " from stream " + name + "'s leader: an answer without a message")
	}
	var h nats.Header
	if len(resp.Message.Header) > 0 {
		if h, err = nats.DecodeHeadersMsg(resp.Message.Header); err != nil {
			return 0, nil, nil, fmt.Errorf("get the last message of %s from stream %s's leader: %w", subject, name, err)
		}
	}
	return resp.Message.Seq, h, resp.Message.Data, nil
}
